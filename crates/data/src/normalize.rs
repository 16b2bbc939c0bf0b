//! Optional tweet clean-up, off by default so that texts reach the tokenizer as written.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Which normalisation steps to apply; recorded in the manifest. Steps run in field order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Normalization {
    /// Decode HTML entities (`&amp;` → `&`, `&quot;` → `"`, `&#39;` → `'`): the raw release
    /// stores many characters escaped.
    pub html_unescape: bool,
    /// Replace `@handle` by `@user`, as the Twitter-RoBERTa models were trained.
    pub mentions: bool,
    /// Replace `http…` / `www.…` links by `http`.
    pub urls: bool,
    /// Collapse runs of whitespace (newlines and tabs included) to one space and trim the ends.
    pub whitespace: bool,
}

impl Normalization {
    /// Every step on.
    pub fn all() -> Self {
        Self {
            html_unescape: true,
            mentions: true,
            urls: true,
            whitespace: true,
        }
    }

    /// True when no step is on.
    pub fn is_identity(&self) -> bool {
        *self == Self::default()
    }

    /// Applies the enabled steps to `text`.
    pub fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        if self.html_unescape && text.contains('&') {
            text = Cow::Owned(html_escape::decode_html_entities(&text).into_owned());
        }
        if self.urls {
            text = replace(text, &URL, "http");
        }
        if self.mentions && text.contains('@') {
            text = replace(text, &MENTION, "@user");
        }
        if self.whitespace {
            text = replace(text, &WHITESPACE, " ");
            if text.starts_with(' ') || text.ends_with(' ') {
                text = Cow::Owned(text.trim_matches(' ').to_string());
            }
        }
        text
    }
}

static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(?:https?://|www\.)\S+").expect("valid regex"));
static MENTION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"@[A-Za-z0-9_]+").expect("valid regex"));
// A single space is already normal; only runs and other whitespace characters change.
static WHITESPACE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s{2,}|[\t\n\r\x0B\x0C\u{85}\u{A0}]").expect("valid regex"));

fn replace<'a>(text: Cow<'a, str>, pattern: &Regex, with: &str) -> Cow<'a, str> {
    match pattern.replace_all(&text, with) {
        Cow::Borrowed(_) => text,
        Cow::Owned(s) => Cow::Owned(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_leaves_text_alone() {
        let text = "  @bob &amp; http://x.y  ";
        assert_eq!(Normalization::default().apply(text), text);
    }

    #[test]
    fn every_step() {
        let n = Normalization::all();
        assert_eq!(
            n.apply("  @bob_1 said &quot;hi&quot; &amp; see http://t.co/x?a=1\n\nor www.x.org  "),
            "@user said \"hi\" & see http or http"
        );
        assert_eq!(n.apply("plain text"), "plain text");
        assert_eq!(n.apply("email a@b.c"), "email a@user.c");
    }

    #[test]
    fn steps_are_independent() {
        let only_ws = Normalization {
            whitespace: true,
            ..Default::default()
        };
        assert_eq!(only_ws.apply(" a \t b\n"), "a b");
        let only_urls = Normalization {
            urls: true,
            ..Default::default()
        };
        assert_eq!(only_urls.apply("go HTTPS://A.B/c now"), "go http now");
    }
}
