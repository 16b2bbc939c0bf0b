//! Resolving a pretrained name to a local folder: a path as is, or a Hugging Face hub id through
//! the hub's cache layout (`models--org--name/snapshots/<rev>/…`), downloading when allowed.
//! One implementation for the model crate (weights, `config.json`) and the tokenizer crate
//! (`tokenizer.json` or `vocab.json` + `merges.txt`), which each turn [`NotFound`] into their
//! own error naming what was looked for.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

/// A pretrained name that resolves to no folder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}`: {detail}")]
pub struct NotFound {
    /// The name or path given.
    pub name: String,
    /// Where it was looked for, and why it was not found.
    pub detail: String,
}

/// Where the Hugging Face cache is and whether the network may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub cache folder (the one holding `models--…`).
    pub cache_dir: PathBuf,
    /// Only cached files are used (`HF_HUB_OFFLINE`).
    pub offline: bool,
}

impl HubSettings {
    /// Reads the environment as `huggingface_hub` does: `HF_HUB_CACHE`,
    /// `HUGGINGFACE_HUB_CACHE`, `HF_HOME/hub`, `XDG_CACHE_HOME/huggingface/hub`, then
    /// `~/.cache/huggingface/hub`; offline when `HF_HUB_OFFLINE` is 1, on, yes or true.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`HubSettings::from_env`] with the variables looked up through `var` (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|home| PathBuf::from(home).join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("huggingface/hub")))
            .unwrap_or_else(|| {
                PathBuf::from(var("HOME").unwrap_or_else(|| "/tmp".into()))
                    .join(".cache/huggingface/hub")
            });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
        });
        Self { cache_dir, offline }
    }
}

/// True when `name` can only be a hub id: `name` or `org/name`, no path syntax.
fn looks_like_hub_id(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// Resolves `name_or_path` to a folder holding at least one of the files in `wanted` (for
/// example `["tokenizer.json", "vocab.json"]`).
///
/// A local folder is returned as is. A hub id (`roberta-base`, `FacebookAI/roberta-base`,
/// optionally `@revision`) is looked up in the cache; missing files are downloaded unless
/// offline. The returned folder is the snapshot folder, where the hub keeps every file of a
/// revision side by side.
pub fn resolve_pretrained(
    name_or_path: &str,
    wanted: &[&str],
    settings: &HubSettings,
) -> Result<PathBuf, NotFound> {
    let path = Path::new(name_or_path);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let (id, revision) = match name_or_path.split_once('@') {
        Some((id, revision)) => (id, revision.to_string()),
        None => (name_or_path, "main".to_string()),
    };
    if !looks_like_hub_id(id) {
        return Err(NotFound {
            name: name_or_path.into(),
            detail: "no such folder, and not a hub id".into(),
        });
    }
    // A commit hash names its snapshot folder directly (hf-hub only follows `refs/<name>`).
    let commit_snapshot = (revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| {
            settings
                .cache_dir
                .join(format!("models--{}", id.replace('/', "--")))
                .join("snapshots")
                .join(&revision)
        });
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision);
    let cache = Cache::new(settings.cache_dir.clone());
    let cached = cache.repo(repo.clone());
    let mut found: Option<PathBuf> = None;
    let mut download_errors = Vec::new();
    for file in wanted {
        let in_commit = commit_snapshot
            .as_ref()
            .map(|dir| dir.join(file))
            .filter(|p| p.is_file());
        if let Some(p) = in_commit.or_else(|| cached.get(file)) {
            found = Some(p);
            continue;
        }
        if settings.offline {
            continue;
        }
        match download(&cache, &repo, file) {
            Ok(p) => found = Some(p),
            Err(e) => download_errors.push(format!("{file}: {e}")),
        }
    }
    match found.as_deref().and_then(Path::parent) {
        Some(snapshot) => Ok(snapshot.to_path_buf()),
        None => Err(NotFound {
            name: name_or_path.into(),
            detail: if settings.offline {
                format!(
                    "not in the Hugging Face cache {} and HF_HUB_OFFLINE is set",
                    settings.cache_dir.display()
                )
            } else {
                format!(
                    "not in the Hugging Face cache {} and the download failed ({}{})",
                    settings.cache_dir.display(),
                    download_errors.first().map_or("", String::as_str),
                    match download_errors.len() {
                        0 | 1 => String::new(),
                        n => format!("; {} more files failed alike", n - 1),
                    }
                )
            },
        }),
    }
}

fn download(cache: &Cache, repo: &Repo, file: &str) -> Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .with_progress(false)
        .build()
        .map_err(|e| e.to_string())?;
    api.repo(repo.clone()).get(file).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn cache_folder_follows_huggingface_hub_precedence() {
        let s = HubSettings::from_vars(vars(&[("HF_HOME", "/h"), ("HF_HUB_CACHE", "/c")]));
        assert_eq!(s.cache_dir, PathBuf::from("/c"));
        let s = HubSettings::from_vars(vars(&[("HF_HOME", "/h"), ("HOME", "/home/u")]));
        assert_eq!(s.cache_dir, PathBuf::from("/h/hub"));
        let s = HubSettings::from_vars(vars(&[("HOME", "/home/u")]));
        assert_eq!(s.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(!s.offline);
        let s = HubSettings::from_vars(vars(&[("HF_HUB_OFFLINE", "TRUE")]));
        assert!(s.offline);
    }

    #[test]
    fn hub_ids_and_paths() {
        assert!(looks_like_hub_id("roberta-base"));
        assert!(looks_like_hub_id("FacebookAI/roberta-base"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
    }
}
