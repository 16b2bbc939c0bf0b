//! The interface every storage implements (Optuna's `storages/_base.py`).

use crate::SearchError;
use crate::trial::{StudyChange, StudyRecord};

/// Where a study lives. `transact` must run the change atomically with respect to every other
/// process sharing the study, which is what lets several workers run one study; it may run
/// `change` more than once (a transaction that lost a race is run again).
pub trait StudyStorage: std::fmt::Debug + Send + Sync {
    /// Reads the record, applies `change`, writes the result when asked (what differs from
    /// the record read), returns it.
    fn transact(&self, change: &mut StudyChange<'_>) -> Result<StudyRecord, SearchError>;
    /// Records that the worker running trial `number` is alive (Optuna's heartbeat).
    fn heartbeat(&self, number: usize) -> Result<(), SearchError>;
    /// Where the study is, for messages (never with a password).
    fn describe(&self) -> String;
}
