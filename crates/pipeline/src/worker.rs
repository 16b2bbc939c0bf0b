//! Who runs a trial: this machine's name and this process's id, recorded in each trial
//! (`sentiment:worker`, a trial system attribute), so that the report says which worker ran
//! each trial and a trial whose process on this machine has ended is known dead at once,
//! without waiting for its heartbeat to go stale.

/// This worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Worker {
    /// The machine's host name.
    pub host: String,
    /// The process id.
    pub pid: u32,
}

impl Worker {
    /// This process on this machine.
    pub fn this() -> Self {
        Self {
            host: host_name(),
            pid: std::process::id(),
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

    /// The worker a recorded name designates.
    pub fn parse(name: &str) -> Option<Self> {
        let (host, rest) = name.rsplit_once(':')?;
        let pid = rest.split('/').next()?.parse().ok()?;
        Some(Self {
            host: host.to_string(),
            pid,
        })
    }

    /// Whether `other` is a process of this machine, other than this one, that has ended.
    pub fn knows_ended(&self, other: &Worker) -> bool {
        other.host == self.host && other.pid != self.pid && !process_exists(other.pid)
    }
}

/// The machine's host name (`localhost` if it cannot be read).
fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if status == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

/// Whether a process with this id exists (signal 0 checks without sending anything; a process
/// of another user answers "not permitted", which means it exists).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_ended_processes_are_known() {
        let me = Worker::this();
        assert_eq!(Worker::parse(&me.name(None)), Some(me.clone()));
        assert_eq!(Worker::parse(&me.name(Some(3))), Some(me.clone()));
        // This process is alive and is not "another that ended"; a child that exited has ended.
        assert!(!me.knows_ended(&me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let ended = Worker {
            host: me.host.clone(),
            pid,
        };
        assert!(me.knows_ended(&ended));
        let elsewhere = Worker {
            host: format!("{}-elsewhere", me.host),
            pid,
        };
        assert!(!me.knows_ended(&elsewhere));
    }
}
