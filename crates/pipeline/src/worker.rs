//! Who runs a trial: this machine's name and this process's id, recorded in each trial
//! (`sentiment:worker`, a trial system attribute), so that the report says which worker ran
//! each trial and a trial whose process on this machine has ended is known dead at once,
//! without waiting for its heartbeat to go stale.
//!
//! A host name and a pid do not name a process alone: containers that share the host's name
//! (`--network host`, Kubernetes' `hostNetwork`) each have their own pid namespace, and a
//! machine that rebooted reuses pids. So the trial also records where its pid is valid
//! ([`PROCESS_ATTRIBUTE`]: the boot id and the pid namespace), and a process is judged ended
//! only when that place is this process's own; anywhere else, only a stale heartbeat fails a
//! trial.

/// The trial system attribute naming where the worker's pid is valid: `BOOT_ID/PID_NAMESPACE`.
pub(crate) const PROCESS_ATTRIBUTE: &str = "sentiment:process";

/// This worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Worker {
    /// The machine's host name.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// Where the pid is valid (boot and pid namespace), where the system says (Linux).
    pub place: Option<String>,
}

impl Worker {
    /// This process on this machine.
    pub fn this() -> Self {
        Self {
            host: host_name(),
            pid: std::process::id(),
            place: process_place(),
        }
    }

    /// The name recorded in a trial: `host:pid`, and `/device` when the process runs several
    /// devices.
    pub fn name(&self, device: Option<usize>) -> String {
        match device {
            Some(d) => format!("{}:{}/{d}", self.host, self.pid),
            None => format!("{}:{}", self.host, self.pid),
        }
    }

    /// The worker a recorded name (and place, if recorded) designates.
    pub fn parse(name: &str, place: Option<&str>) -> Option<Self> {
        let (host, rest) = name.rsplit_once(':')?;
        let pid = rest.split('/').next()?.parse().ok()?;
        Some(Self {
            host: host.to_string(),
            pid,
            place: place.map(str::to_string),
        })
    }

    /// Whether `other` is a process of this machine and pid namespace, since its last boot,
    /// other than this one, that has ended.
    pub fn knows_ended(&self, other: &Worker) -> bool {
        other.host == self.host
            && self.place.is_some()
            && other.place == self.place
            && other.pid != self.pid
            && !process_exists(other.pid)
    }
}

/// `BOOT_ID/PID_NAMESPACE` of this process (Linux; None elsewhere, or if unreadable).
fn process_place() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}/{}", boot.trim(), namespace.display()))
}

/// The machine's host name (the `gethostname` crate: Unix and Windows; `localhost` if it is
/// empty or not UTF-8).
fn host_name() -> String {
    match gethostname::gethostname().into_string() {
        Ok(name) if !name.is_empty() => name,
        _ => "localhost".to_string(),
    }
}

/// Whether a process with this id exists (signal 0 checks without sending anything; a process
/// of another user answers "not permitted", which means it exists). Unix only, by hand (one
/// call; a process-table crate would read every process): elsewhere [`process_place`] is
/// None, so no worker is ever known to have ended and this is not asked.
#[cfg(unix)]
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn process_exists(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_ended_processes_are_known() {
        let me = Worker::this();
        let place = me.place.as_deref();
        assert!(place.is_some(), "Linux says where a pid is valid");
        assert_eq!(Worker::parse(&me.name(None), place), Some(me.clone()));
        assert_eq!(Worker::parse(&me.name(Some(3)), place), Some(me.clone()));
        // This process is alive and is not "another that ended"; a child that exited has ended.
        assert!(!me.knows_ended(&me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let ended = Worker {
            host: me.host.clone(),
            pid,
            place: me.place.clone(),
        };
        assert!(me.knows_ended(&ended));
        let elsewhere = Worker {
            host: format!("{}-elsewhere", me.host),
            ..ended.clone()
        };
        assert!(!me.knows_ended(&elsewhere));
        // Same host name, another container (pid namespace) or an earlier boot: its pids are
        // not ours to look up, so only its heartbeat can say it died; nor can a trial that
        // recorded no place.
        let other_namespace = Worker {
            place: Some("boot/pid:[1]".into()),
            ..ended.clone()
        };
        assert!(!me.knows_ended(&other_namespace));
        let unplaced = Worker {
            place: None,
            ..ended
        };
        assert!(!me.knows_ended(&unplaced));
    }
}
