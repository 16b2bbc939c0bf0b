//! Where studies live, in Optuna's own RDB schema ([`rdb`]): an SQLite file
//! ([`SqliteStorage`]) or a PostgreSQL database ([`PostgresStorage`]), and the storage a URL
//! names ([`storage`]). Laid out as Optuna's `storages/`: the interface ([`base`]), the
//! schema and each database in its own module; they read the study's types
//! ([`crate::trial`]), never the study's logic, and none of them this module.

use std::path::Path;

use crate::SearchError;

mod base;
mod postgres;
mod rdb;
mod sqlite;

pub use base::StudyStorage;
pub use postgres::PostgresStorage;
pub use sqlite::SqliteStorage;

/// The study `name` in a storage given as Optuna names it: `sqlite:///PATH` (a relative
/// path; `sqlite:////abs/path` for an absolute one), `postgresql://USER@HOST:PORT/DB` (also
/// `postgres://` and `postgresql+DRIVER://`; [`PostgresStorage`] says what else it reads), or a
/// bare path to an SQLite file.
pub fn storage(url: &str, name: &str) -> Result<Box<dyn StudyStorage>, SearchError> {
    if let Some(path) = url.strip_prefix("sqlite:///") {
        return Ok(Box::new(SqliteStorage::new(path, name)));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        if scheme == "postgres" || scheme == "postgresql" || scheme.starts_with("postgresql+") {
            return Ok(Box::new(PostgresStorage::new(url, name)?));
        }
        return Err(SearchError::Storage(format!(
            "storage {}: unknown scheme {scheme}://: the storages are sqlite:///PATH, \
             postgresql://USER@HOST:PORT/DB or a file path",
            crate::redact_url(url)
        )));
    }
    let path = Path::new(url);
    if path.extension().is_some_and(|e| e == "json") {
        return Err(SearchError::Storage(format!(
            "{url}: studies are kept in Optuna's schema (an SQLite file such as study.db, or \
             PostgreSQL), not JSON; a JSON study of an earlier version is not read: start the \
             study again in a .db file"
        )));
    }
    Ok(Box::new(SqliteStorage::new(path, name)))
}
