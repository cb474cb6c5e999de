//! A real PostgreSQL for tests: Debian's binaries run from a temporary folder on a free port,
//! trusting local connections. Started with `initdb` and `pg_ctl` (as the `postgres` user when
//! the tests run as root, since `initdb` refuses root), stopped when dropped; a watchdog also
//! stops it and removes the folder when the test process exits without dropping it.
//!
//! When the binaries are absent the tests that need them say so loudly and pass, unless `CI` is
//! set: on CI an absent PostgreSQL is a failure, so a missing install can never look green.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::testsuite::{database_of, free_port, on_ci, on_own_runtime};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::PostgresStore;

pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// Where `initdb` and `pg_ctl` are: `CLIENTELE_PG_BIN`, else Debian's newest
/// `/usr/lib/postgresql/N/bin`, else `PATH`.
fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CLIENTELE_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgServer {
    /// Starts a server, or returns `None` (after saying why) when PostgreSQL is not installed
    /// and `CI` is not set. Panics when it is set, or when a present server fails to start.
    pub fn start() -> Option<PgServer> {
        let Some(bin) = find_bin() else {
            assert!(
                !on_ci(),
                "PostgreSQL binaries (initdb, pg_ctl) not found and CI is set: install Debian's `postgresql` (scripts/test.sh does) or set CLIENTELE_PG_BIN"
            );
            // Straight to the process's stderr: the test harness captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!! SKIPPED: PostgreSQL binaries (initdb, pg_ctl) not found; install Debian's `postgresql` or set CLIENTELE_PG_BIN to run the PostgreSQL tests !!!\n"
            );
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "clientele-pg-{}",
            &clientele_core::event::random_id128()[..12]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = is_root();
        let server = PgServer {
            dir,
            bin,
            port: free_port(),
            as_postgres,
        };
        if as_postgres {
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(&server.dir)
                .status()
                .unwrap();
            assert!(
                ok.success(),
                "cannot chown {} to postgres",
                server.dir.display()
            );
        }
        let data = server.dir.join("data");
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        server.pg_ctl_start();
        Some(server)
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                "start".as_ref(),
            ],
        );
    }

    /// Starts the server again after [`PgServer::stop`], on the same port with the same data.
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    /// The server every test of this process shares; stopped by a watchdog when the process
    /// ends (statics are never dropped).
    pub fn shared() -> Option<&'static PgServer> {
        static SHARED: OnceLock<Option<PgServer>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let server = PgServer::start()?;
                server.watch(std::process::id());
                Some(server)
            })
            .as_ref()
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        let out = self
            .command(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// A detached shell that stops the server and removes its folder once `pid` has exited.
    fn watch(&self, pid: u32) {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; '{}' -D '{}' -m immediate stop; rm -rf '{}'",
            self.bin.join("pg_ctl").display(),
            self.dir.join("data").display(),
            self.dir.display()
        );
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        // Not waited for: it outlives this process on purpose.
        #[allow(clippy::zombie_processes)]
        let _ = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `db` unless it exists.
    pub fn create_database(&self, db: &str) {
        let admin = self.url("postgres");
        let db = db.to_string();
        on_own_runtime(move || async move {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let exists = client
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
                .await
                .unwrap();
            if exists.is_none() {
                client
                    .batch_execute(&format!("CREATE DATABASE \"{db}\""))
                    .await
                    .unwrap();
            }
        });
    }

    /// Runs `sql` in database `db` with `psql`; returns its unaligned rows, one a line.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url(db))
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server now (the watchdog then finds nothing to do).
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdin(Stdio::null())
            .output();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The suite opens one database per test folder (the same folder, the same database, so a
/// reopen finds what was written) on the process's shared server. The connection made here
/// ends with its setup runtime; the store opens new ones on the test's runtime as needed.
impl crate::testsuite::Backend for PostgresStore {
    fn available() -> bool {
        PgServer::shared().is_some()
    }

    fn open_in(dir: &Path) -> Self {
        let server = PgServer::shared().expect("available() was checked");
        let db = database_of(dir);
        server.create_database(&db);
        let url = server.url(&db);
        on_own_runtime(|| async move { PostgresStore::connect(&url).await.unwrap() })
    }
}
