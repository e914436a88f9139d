//! A throwaway PostgreSQL cluster: `initdb` into a temp dir, `postgres` on a free loopback port
//! with scram-sha-256 authentication, torn down on drop. Works as root by running the server as
//! the `postgres` system user (initdb refuses to run as root).

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum TempPostgresError {
    #[error("PostgreSQL server binaries not found (looked in $PGID_PG_BIN, /usr/lib/postgresql/*/bin, PATH); install them with: apt-get install -y postgresql")]
    NoBinaries,
    #[error("running as root needs a 'postgres' system user to run the server (apt-get install -y postgresql creates it)")]
    NoPostgresUser,
    #[error("{what}: {message}")]
    Failed { what: String, message: String },
}

fn failed(what: &str, message: impl std::fmt::Display) -> TempPostgresError {
    TempPostgresError::Failed {
        what: what.to_string(),
        message: message.to_string(),
    }
}

pub struct TempPostgres {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
    /// Password of the `postgres` superuser.
    pub password: String,
    pub bin: PathBuf,
    /// The server's command line after `-p <port>` (for a restart).
    args: Vec<String>,
    run_as: Option<(u32, u32)>,
}

impl TempPostgres {
    pub fn start() -> Result<TempPostgres, TempPostgresError> {
        TempPostgres::start_with(&[])
    }

    /// Starts with extra `-c name=value` server settings (they override the defaults).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<TempPostgres, TempPostgresError> {
        let bin = find_bin_dir().ok_or(TempPostgresError::NoBinaries)?;
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_user().ok_or(TempPostgresError::NoPostgresUser)?)
        } else {
            None
        };
        let mut dir = tempfile::Builder::new()
            .prefix("pgid-pg-")
            .tempdir()
            .map_err(|e| failed("creating temp dir", e))?;
        let mut pw = [0u8; 18];
        rand::rngs::OsRng.fill_bytes(&mut pw);
        let password = hex::encode(pw);
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))
            .map_err(|e| failed("writing pwfile", e))?;
        if let Some((uid, gid)) = run_as {
            chown_tree(dir.path(), uid, gid)?;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
                .map_err(|e| failed("chmod", e))?;
        }
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"), run_as)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--pwfile",
            ])
            .arg(&pwfile)
            .output()
            .map_err(|e| failed("running initdb", e))?;
        if !out.status.success() {
            return Err(failed("initdb", String::from_utf8_lossy(&out.stderr)));
        }
        let _ = std::fs::remove_file(&pwfile);

        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let mut args: Vec<String> = [
                "listen_addresses=127.0.0.1",
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
                "max_connections=400",
                "password_encryption=scram-sha-256",
            ]
            .iter()
            .flat_map(|s| ["-c".to_string(), s.to_string()])
            .collect();
            args.extend(
                settings
                    .iter()
                    .flat_map(|(k, v)| ["-c".to_string(), format!("{k}={v}")]),
            );
            let mut pg = TempPostgres {
                dir,
                child: None,
                port,
                password: password.clone(),
                bin: bin.clone(),
                args,
                run_as,
            };
            match pg.spawn().and_then(|()| pg.wait_ready(&data)) {
                Ok(()) => return Ok(pg),
                Err(e) => {
                    last_error = e;
                    pg.stop();
                    dir = pg.take_dir();
                }
            }
        }
        Err(failed("postgres did not start", last_error))
    }

    /// Starts the server process on this cluster's port (its log appended to).
    fn spawn(&mut self) -> Result<(), String> {
        let log = self.log_path();
        let logfile = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("creating log: {e}"))?;
        if let Some((uid, gid)) = self.run_as {
            let _ = std::os::unix::fs::chown(&log, Some(uid), Some(gid));
        }
        let child = command(&self.bin.join("postgres"), self.run_as)
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().map_err(|e| format!("log: {e}"))?)
            .stderr(logfile)
            .spawn()
            .map_err(|e| format!("starting postgres: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server (fast shutdown: every client is disconnected); the cluster stays.
    pub fn stop_server(&mut self) {
        self.stop();
    }

    /// Starts the stopped server again on the same port; returns once it accepts connections.
    pub fn start_server(&mut self) -> Result<(), TempPostgresError> {
        let data = self.data_dir();
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        self.spawn()
            .and_then(|()| self.wait_ready(&data))
            .map_err(|e| failed("restarting postgres", e))
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.child = None;
        let placeholder = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, placeholder)
    }

    fn wait_ready(&mut self, data: &Path) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pidfile = data.join("postmaster.pid");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut log = String::new();
                    let _ = std::fs::File::open(self.dir.path().join("postgres.log"))
                        .and_then(|mut f| f.read_to_string(&mut log));
                    return Err(format!("exited with {status}: {log}"));
                }
            }
            if std::fs::read_to_string(&pidfile)
                .is_ok_and(|s| s.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("timed out waiting for the server".into())
    }

    /// `postgres://user:password@127.0.0.1:port/db`
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    pub fn superuser_url(&self, db: &str) -> String {
        self.url("postgres", &self.password, db)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's own log (its stderr and stdout).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT = fast shutdown: disconnect clients, checkpoint, exit.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn command(program: &Path, run_as: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(program);
    if let Some((uid, gid)) = run_as {
        c.uid(uid).gid(gid);
        c.env("HOME", "/tmp");
    }
    c.env_remove("PGDATA");
    c
}

fn free_port() -> Result<u16, TempPostgresError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| failed("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| failed("finding a free port", e))?
        .port())
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), TempPostgresError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| failed("chown", e))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| failed("chown", e))? {
            chown_tree(&entry.map_err(|e| failed("chown", e))?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// uid and gid of the `postgres` system user, if there is one.
pub fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == "postgres")
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// `$PGID_PG_BIN`, else the newest `/usr/lib/postgresql/<v>/bin`, else `postgres` on PATH.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PGID_PG_BIN") {
        let p = PathBuf::from(dir);
        return p.join("postgres").exists().then_some(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("postgres").exists() && p.join("initdb").exists())
    })
}
