//! A real, throwaway PostgreSQL server for tests: `initdb` into a temporary folder, listening
//! on a Unix socket in that folder only (no TCP port), with fsync off, stopped and deleted when
//! dropped. The server refuses to run as root, so as root it runs as the `postgres` user
//! (`runuser`). The binaries are the machine's: Debian's `postgresql` package (`.ci/run`
//! installs it when it is missing).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running server; stopped on drop.
pub struct TestServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

/// The folder of the newest installed server's binaries.
fn server_binaries() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin: install it \
             (apt-get install postgresql; .ci/run does)"
        )
    })
}

impl TestServer {
    /// Initialises and starts a server.
    pub fn start() -> Self {
        let bin = server_binaries();
        let dir = tempfile::tempdir().expect("a temporary folder");
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the server's folder failed");
        }
        let server = Self {
            dir,
            bin,
            as_postgres,
        };
        let data = server.dir.path().join("data");
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--no-sync".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
            ],
        );
        let options = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c max_connections=60",
            server.dir.path().display()
        );
        let log = server.dir.path().join("server.log");
        server.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        );
        server
    }

    /// Runs one of the server's programs, as `postgres` when we are root; panics with its
    /// output when it fails.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        if let Err(message) = self.try_run(program, args) {
            panic!("{message}");
        }
    }

    fn try_run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    /// Restarts the server (a fast shutdown: every connection is cut, as when a database
    /// host restarts), with the options it was started with; returns once it accepts
    /// connections again.
    #[allow(dead_code)] // The chaos test's alone.
    pub fn restart(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "restart".as_ref(),
            ],
        );
    }

    /// The folder of the server's socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new, empty database: its URL, as Optuna writes one.
    pub fn database(&self, name: &str) -> String {
        let socket = self.socket_dir().to_path_buf();
        self.run(
            "createdb",
            &[
                "-h".as_ref(),
                socket.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                name.as_ref(),
            ],
        );
        format!("postgresql://postgres@/{name}?host={}", socket.display())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        // Not a panic in a drop: a server that is already gone needs no stopping.
        let stopped = self.try_run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        if let Err(message) = stopped {
            eprintln!("{message}");
        }
    }
}
