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
/// example `["tokenizer.json", "vocab.json"]`); a hub id gets every one of them that the hub
/// has.
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
    let groups: Vec<&[&str]> = wanted.iter().map(std::slice::from_ref).collect();
    resolve_choosing(name_or_path, &groups, settings)
}

/// [`resolve_pretrained`] where each group holds alternatives in order of preference (the
/// formats of a model's weights, say): a hub id gets one file of each group, the first the
/// cache holds, else the first the hub has (the others are not downloaded).
pub fn resolve_choosing(
    name_or_path: &str,
    groups: &[&[&str]],
    settings: &HubSettings,
) -> Result<PathBuf, NotFound> {
    let path = Path::new(name_or_path);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let hub = HubRepo::of(name_or_path, settings)?;
    resolve_with(
        name_or_path,
        groups,
        settings.offline,
        &|file| hub.cached(file),
        &mut |file| hub.download(file),
    )
}

/// The files `files` of the model `name_or_path` (the shards its index names, say), fetched
/// into its snapshot folder when it is a hub id and they are missing; a local folder is left
/// as it is.
pub fn fetch_files(
    name_or_path: &str,
    files: &[&str],
    settings: &HubSettings,
) -> Result<(), NotFound> {
    if Path::new(name_or_path).is_dir() {
        return Ok(());
    }
    let groups: Vec<&[&str]> = files.iter().map(std::slice::from_ref).collect();
    let hub = HubRepo::of(name_or_path, settings)?;
    let mut missing = Vec::new();
    for group in &groups {
        if let Err(e) = resolve_with(
            name_or_path,
            &[group],
            settings.offline,
            &|file| hub.cached(file),
            &mut |file| hub.download(file),
        ) {
            missing.push(e.detail);
        }
    }
    match missing.first() {
        None => Ok(()),
        Some(first) => Err(NotFound {
            name: name_or_path.into(),
            detail: format!(
                "{} of {} files missing: {first}",
                missing.len(),
                files.len()
            ),
        }),
    }
}

/// A hub repository and where its files are cached.
struct HubRepo {
    repo: Repo,
    cache: Cache,
    /// The snapshot folder of a revision given as a commit hash (hf-hub only follows
    /// `refs/<name>`).
    commit_snapshot: Option<PathBuf>,
}

impl HubRepo {
    fn of(name_or_path: &str, settings: &HubSettings) -> Result<Self, NotFound> {
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
        let commit_snapshot =
            (revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())).then(|| {
                settings
                    .cache_dir
                    .join(format!("models--{}", id.replace('/', "--")))
                    .join("snapshots")
                    .join(&revision)
            });
        Ok(Self {
            repo: Repo::with_revision(id.to_string(), RepoType::Model, revision),
            cache: Cache::new(settings.cache_dir.clone()),
            commit_snapshot,
        })
    }

    /// The cached copy of `file`, if any.
    fn cached(&self, file: &str) -> Option<PathBuf> {
        let in_commit = self
            .commit_snapshot
            .as_ref()
            .map(|dir| dir.join(file))
            .filter(|p| p.is_file());
        in_commit.or_else(|| self.cache.repo(self.repo.clone()).get(file))
    }

    fn download(&self, file: &str) -> Result<PathBuf, String> {
        download(&self.cache, &self.repo, file)
    }
}

/// One file of each group, from `cached` or else `fetch` (unless `offline`): the snapshot
/// folder they are in. (The two sources are parameters so that the choice is tested without
/// a network.)
fn resolve_with(
    name_or_path: &str,
    groups: &[&[&str]],
    offline: bool,
    cached: &dyn Fn(&str) -> Option<PathBuf>,
    fetch: &mut dyn FnMut(&str) -> Result<PathBuf, String>,
) -> Result<PathBuf, NotFound> {
    let mut found: Option<PathBuf> = None;
    let mut download_errors = Vec::new();
    for group in groups {
        if let Some(p) = group.iter().find_map(|file| cached(file)) {
            found = Some(p);
            continue;
        }
        if offline {
            continue;
        }
        for file in *group {
            match fetch(file) {
                Ok(p) => {
                    found = Some(p);
                    break;
                }
                Err(e) => download_errors.push(format!("{file}: {e}")),
            }
        }
    }
    match found.as_deref().and_then(Path::parent) {
        Some(snapshot) => Ok(snapshot.to_path_buf()),
        None => Err(NotFound {
            name: name_or_path.into(),
            detail: if offline {
                "not in the Hugging Face cache and HF_HUB_OFFLINE is set".to_string()
            } else {
                format!(
                    "not in the Hugging Face cache and the download failed ({}{})",
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

    /// Resolves with a cache holding `cached` and a hub that has `on_hub`; returns what was
    /// fetched.
    fn resolve_fake(
        cached: Vec<&'static str>,
        on_hub: &[&str],
        groups: &[&[&str]],
    ) -> (Result<PathBuf, NotFound>, Vec<String>) {
        let in_cache = |file: &str| {
            cached
                .contains(&file)
                .then(|| PathBuf::from("/snapshot").join(file))
        };
        let mut fetched = Vec::new();
        let result = resolve_with("org/model", groups, false, &in_cache, &mut |file| {
            fetched.push(file.to_string());
            if on_hub.contains(&file) {
                Ok(PathBuf::from("/snapshot").join(file))
            } else {
                Err("404".into())
            }
        });
        (result, fetched)
    }

    #[test]
    fn one_weight_format_is_downloaded_the_first_the_hub_has() {
        let weights: &[&str] = &[
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
        ];
        let groups: &[&[&str]] = &[&["config.json"], weights];
        // Both formats on the hub: safetensors only.
        let (found, fetched) = resolve_fake(
            vec![],
            &["config.json", "model.safetensors", "pytorch_model.bin"],
            groups,
        );
        assert_eq!(found.unwrap(), PathBuf::from("/snapshot"));
        assert_eq!(fetched, ["config.json", "model.safetensors"]);
        // Sharded: the index (its shards are fetched by name afterwards).
        let (_, fetched) = resolve_fake(
            vec![],
            &[
                "config.json",
                "model.safetensors.index.json",
                "pytorch_model.bin",
            ],
            groups,
        );
        assert_eq!(
            fetched,
            [
                "config.json",
                "model.safetensors",
                "model.safetensors.index.json"
            ]
        );
        // A cached format is used as it is: nothing downloaded.
        let (_, fetched) = resolve_fake(vec!["config.json", "pytorch_model.bin"], &[], groups);
        assert!(fetched.is_empty(), "{fetched:?}");
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
