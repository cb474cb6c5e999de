//! A real ClickHouse for tests: Debian's `clickhouse-server` run from a temporary folder with a
//! config of its own (free ports, loopback only, UTC), stopped when dropped; a watchdog also
//! stops it and removes the folder when the test process exits without dropping it.
//!
//! When the binary is absent the tests that need it say so loudly and pass, unless `CI` is set:
//! on CI an absent ClickHouse is a failure, so a missing install can never look green.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::testsuite::{database_of, free_port, on_ci, on_own_runtime};

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::ClickHouseStore;

/// The most rows one query may read as user `budget` (the server refuses more): a test
/// connects as `budget` to prove a query reads only what it needs, not a whole table.
pub const BUDGET_ROWS: u64 = 60_000;

pub struct ChServer {
    dir: PathBuf,
    bin: PathBuf,
    http_port: u16,
    child: Mutex<Option<Child>>,
}

/// `CLIENTELE_CLICKHOUSE_BIN`, else Debian's `/usr/sbin/clickhouse-server`, else `PATH`.
fn find_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("CLIENTELE_CLICKHOUSE_BIN") {
        let bin = PathBuf::from(bin);
        return bin.exists().then_some(bin);
    }
    let debian = PathBuf::from("/usr/sbin/clickhouse-server");
    if debian.exists() {
        return Some(debian);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("clickhouse-server"))
        .find(|p| p.exists())
}

impl ChServer {
    /// Starts a server, or returns `None` (after saying why) when ClickHouse is not installed
    /// and `CI` is not set. Panics when it is set, or when a present server fails to start.
    pub fn start() -> Option<ChServer> {
        let Some(bin) = find_bin() else {
            assert!(
                !on_ci(),
                "clickhouse-server not found and CI is set: install Debian's `clickhouse-server` (scripts/test.sh does) or set CLIENTELE_CLICKHOUSE_BIN"
            );
            // Straight to the process's stderr: the test harness captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!! SKIPPED: clickhouse-server not found; install Debian's `clickhouse-server` or set CLIENTELE_CLICKHOUSE_BIN to run the ClickHouse tests !!!\n"
            );
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "clientele-ch-{}",
            &clientele_core::event::random_id128()[..12]
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let http_port = free_port();
        let tcp_port = free_port();
        let d = dir.display();
        std::fs::write(
            dir.join("config.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog></logger>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <timezone>UTC</timezone>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mlock_executable>false</mlock_executable>
</yandex>
"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("users.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default><budget><max_rows_to_read>{BUDGET_ROWS}</max_rows_to_read><read_overflow_mode>throw</read_overflow_mode></budget></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
  <budget><password></password><networks><ip>127.0.0.1</ip></networks><profile>budget</profile><quota>default</quota></budget></users>
  <quotas><default></default></quotas>
</yandex>
"#
            ),
        )
        .unwrap();
        let server = ChServer {
            dir,
            bin,
            http_port,
            child: Mutex::new(None),
        };
        server.restart();
        Some(server)
    }

    /// Starts the server (again, after [`ChServer::stop`]) on the same ports with the same data,
    /// and waits until it answers.
    pub fn restart(&self) {
        let log = std::fs::File::create(self.dir.join("stdout.log")).unwrap();
        let child = Command::new(&self.bin)
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        *self.child.lock().unwrap() = Some(child);
        let started = Instant::now();
        while !self.answers() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "clickhouse-server did not answer within 60 s: {}{}",
                std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default(),
                std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether `/ping` answers `Ok.`.
    fn answers(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.http_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /ping HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.ends_with("Ok.\n")
    }

    /// The server every test of this process shares; stopped by a watchdog when the process
    /// ends (statics are never dropped).
    pub fn shared() -> Option<&'static ChServer> {
        static SHARED: OnceLock<Option<ChServer>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let server = ChServer::start()?;
                server.watch(std::process::id());
                Some(server)
            })
            .as_ref()
    }

    /// A detached shell that stops the server and removes its folder once `pid` has exited.
    fn watch(&self, pid: u32) {
        let server = self
            .child
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, std::process::Child::id);
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; kill -9 {server}; sleep 1; rm -rf '{}'",
            self.dir.display()
        );
        // Not waited for: it outlives this process on purpose.
        #[allow(clippy::zombie_processes)]
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `db` on this server, as `[storage] clickhouse_url` takes it.
    pub fn url(&self, db: &str) -> String {
        format!("http://127.0.0.1:{}/?database={db}", self.http_port)
    }

    /// [`ChServer::url`] as user `budget`, whose queries may read at most [`BUDGET_ROWS`] rows.
    pub fn budget_url(&self, db: &str) -> String {
        format!("http://budget@127.0.0.1:{}/?database={db}", self.http_port)
    }

    /// Runs `sql` and returns the answer's body (TSV unless the query says otherwise).
    pub fn query(&self, sql: &str) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "POST / HTTP/1.0\r\nContent-Length: {}\r\n\r\n{sql}",
            sql.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{sql}: {answer}"
        );
        body.to_string()
    }

    /// Stops the server now (SIGKILL: an outage, not a shutdown), and waits for it to exit.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The suite opens one database per test folder (the same folder, the same database, so a
/// reopen finds what was written) on the process's shared server.
impl crate::testsuite::Backend for ClickHouseStore {
    fn available() -> bool {
        ChServer::shared().is_some()
    }

    fn open_in(dir: &Path) -> Self {
        let server = ChServer::shared().expect("available() was checked");
        let db = database_of(dir);
        let url = server.url(&db);
        on_own_runtime(|| async move { ClickHouseStore::connect(&url).await.unwrap() })
    }
}
