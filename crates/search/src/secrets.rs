//! Credentials never shown: the one place that masks passwords in storage URLs and in command
//! lines, used wherever either is printed, logged or written (errors, the report's command,
//! a study's description).

/// `url` with every password it may carry replaced by `***`: the userinfo's password and any
/// query parameter whose name contains `password`. Text without `://` is returned as it is.
///
/// Clients disagree on where the userinfo ends: tokio-postgres reads it up to the first `@`
/// anywhere in the URL (so `ann:pa/ss@host` has the password `pa/ss`), libpq up to the last
/// `@` before the host. Everything from the first `:` before the first `@` up to the last
/// `@` is masked, which covers both readings (and masks a little too much rather than too
/// little when a query value holds an `@`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let mut rest = rest.to_string();
    // Where the query is looked for: after a masked userinfo (whose password may have held a
    // `?`), else from the start (a query value may hold an `@`).
    let mut query_from = 0;
    if let Some(first_at) = rest.find('@')
        && let Some(colon) = rest[..first_at].find(':')
    {
        let last_at = rest.rfind('@').expect("an @ was found");
        rest.replace_range(colon + 1..last_at, "***");
        query_from = colon + "***@".len();
    }
    if let Some(question) = rest[query_from..].find('?').map(|q| q + query_from) {
        let query: Vec<String> = rest[question + 1..]
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                    format!("{key}=***")
                }
                _ => pair.to_string(),
            })
            .collect();
        rest.replace_range(question + 1.., &query.join("&"));
    }
    format!("{scheme}://{rest}")
}

/// A command line's words with the credentials of every URL among them masked
/// ([`redact_url`]), whether the URL is a word of its own or a flag's `--name=URL`.
pub fn redact_args<I, S>(args: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    args.into_iter().map(|a| redact_url(a.as_ref())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_wherever_a_client_would_read_one() {
        for (url, shown) in [
            (
                "postgresql://ann:s3cret@db.lan:5432/studies",
                "postgresql://ann:***@db.lan:5432/studies",
            ),
            (
                "postgresql+psycopg2://ann@db.lan/studies?password=s3cret&sslmode=disable",
                "postgresql+psycopg2://ann@db.lan/studies?password=***&sslmode=disable",
            ),
            ("postgres://ann@/studies", "postgres://ann@/studies"),
            // tokio-postgres: the password runs to the first `@`, wherever it is.
            (
                "postgresql://ann:pa/ss@127.0.0.1:1/x",
                "postgresql://ann:***@127.0.0.1:1/x",
            ),
            (
                "postgresql://ann:pa?ss@127.0.0.1:1/x",
                "postgresql://ann:***@127.0.0.1:1/x",
            ),
            // libpq: to the last `@`.
            (
                "postgresql://ann:pa@ss@127.0.0.1/x",
                "postgresql://ann:***@127.0.0.1/x",
            ),
            (
                "--storage=postgresql://bob:hunter2@h/db?sslpassword=k3y",
                "--storage=postgresql://bob:***@h/db?sslpassword=***",
            ),
            (
                "postgresql://bob@h/db?application_name=a@b",
                "postgresql://bob@h/db?application_name=a@b",
            ),
            ("sqlite:///study.db", "sqlite:///study.db"),
            ("runs/study.db", "runs/study.db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn command_lines_keep_every_word_but_the_secrets() {
        assert_eq!(
            redact_args([
                "pipeline",
                "--storage",
                "postgres://a:b@h/d",
                "--trials",
                "3"
            ]),
            [
                "pipeline",
                "--storage",
                "postgres://a:***@h/d",
                "--trials",
                "3"
            ]
        );
    }

    proptest::proptest! {
        /// Whatever the password's characters, it never survives.
        #[test]
        fn no_password_survives(password in "[ -~]{4,20}", user in "[a-z]{1,8}") {
            let url = format!("postgresql://{user}:{password}@db.lan:5432/studies");
            let shown = redact_url(&url);
            proptest::prop_assert!(shown.starts_with(&format!("postgresql://{user}:***@")), "{}", shown);
            let query = format!("postgresql://{user}@db.lan/s?password={password}");
            let shown = redact_url(&query);
            let value = &shown[shown.find("password=").unwrap() + 9..];
            proptest::prop_assert!(value.starts_with("***"), "{}", shown);
        }
    }
}
