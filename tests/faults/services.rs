//! The processes the fault suite runs and breaks: a private PostgreSQL cluster (`initdb`,
//! `pg_ctl`), a private `redis-server`, and `switchboard` processes. Everything is killed on drop,
//! panics included.

use std::{
    fs,
    io::{Read, Seek, SeekFrom},
    net::TcpListener,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port nothing listens on now, never handed out twice in this process.
pub fn free_port() -> u16 {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut taken = TAKEN.lock().expect("not poisoned");
        if !taken.contains(&port) {
            taken.push(port);
            return port;
        }
    }
}

/// Seconds since an origin, and the wall clock of that origin (to place database timestamps on
/// the same axis).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    origin_unix: f64,
}

impl Clock {
    pub fn new() -> Self {
        let origin_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        Self {
            origin: Instant::now(),
            origin_unix,
        }
    }

    pub fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// A Unix timestamp (seconds) on this clock.
    pub fn at_unix(&self, unix: f64) -> f64 {
        unix - self.origin_unix
    }
}

/// The last `lines` lines of a log, without colour codes, plus (first) its warnings and errors.
pub fn log_digest(path: &Path, lines: usize) -> String {
    let text = read_end(path, 2 << 20);
    let text = strip_ansi(&text);
    let all: Vec<&str> = text.lines().collect();
    let notable: Vec<&str> = all
        .iter()
        .copied()
        .filter(|l| {
            l.contains(" ERROR ")
                || l.contains(" WARN ")
                || l.contains("panicked")
                || l.contains("FATAL")
                || l.starts_with("Error")
        })
        .collect();
    let mut out = format!("--- {} ({} lines", path.display(), all.len());
    if !notable.is_empty() {
        out.push_str(&format!(
            ", {} warnings/errors{}:\n",
            notable.len(),
            if notable.len() > 24 {
                ", the first 12 and last 12"
            } else {
                ""
            }
        ));
        let shown: Vec<&str> = if notable.len() > 24 {
            notable[..12]
                .iter()
                .chain(["    …"].iter())
                .chain(notable[notable.len() - 12..].iter())
                .copied()
                .collect()
        } else {
            notable
        };
        for l in shown {
            out.push_str("    ");
            out.push_str(&clip(l, 400));
            out.push('\n');
        }
        out.push_str(&format!("  last {lines} lines:\n"));
    } else {
        out.push_str(&format!("; last {lines}):\n"));
    }
    for l in &all[all.len().saturating_sub(lines)..] {
        out.push_str("    ");
        out.push_str(&clip(l, 400));
        out.push('\n');
    }
    out
}

fn clip(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_owned();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

fn read_end(path: &Path, max: u64) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max {
        let _ = file.seek(SeekFrom::Start(len - max));
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|err| panic!("opening the log {}: {err}", path.display()));
    let err = file.try_clone().expect("a second handle of the log");
    (Stdio::from(file), Stdio::from(err))
}

/// A child process with its output in a log file; killed (SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    /// Killed on purpose by the test (not a failure when it is dead).
    pub killed_on_purpose: bool,
    /// The listeners of a `switchboard` process (0 / `None` for others).
    pub ops_port: u16,
    pub api_port: Option<u16>,
    exit: Option<ExitStatus>,
}

/// Where every child's pid is noted, so that a later run can kill what a killed run left.
fn registry() -> PathBuf {
    std::env::temp_dir().join("switchboard-faults-children")
}

fn running(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills the processes and clusters that earlier runs of this suite left behind (a run killed
/// with SIGKILL cannot clean up): children whose test process is gone and whose command line is
/// still the program noted, and PostgreSQL clusters whose owner is gone.
pub fn reap_leftovers() {
    let me = std::process::id();
    let mut kept = String::new();
    for line in fs::read_to_string(registry()).unwrap_or_default().lines() {
        let mut fields = line.splitn(3, '\t');
        let (Some(owner), Some(pid), Some(program)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(owner), Ok(pid)) = (owner.parse::<u32>(), pid.parse::<u32>()) else {
            continue;
        };
        if owner != me && running(owner) {
            kept.push_str(line);
            kept.push('\n');
            continue;
        }
        let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if owner != me && exe == Path::new(program) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
    let _ = fs::write(registry(), kept);
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let dir = entry.path();
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("switchboard-faults-pg-")
        {
            continue;
        }
        let owner = fs::read_to_string(dir.join("owner"))
            .ok()
            .and_then(|o| o.trim().parse::<u32>().ok());
        if owner.is_some_and(|o| o == me || running(o)) {
            continue;
        }
        let pid = fs::read_to_string(dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|p| p.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        if let Some(pid) = pid.filter(|p| running(*p)) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Drops this run's children from the registry (they are all reaped by now), so a later run
/// never mistakes a recycled pid for one of them.
pub fn forget_children() {
    let me = format!("{}\t", std::process::id());
    let kept: String = fs::read_to_string(registry())
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.starts_with(&me))
        .map(|line| format!("{line}\n"))
        .collect();
    let _ = fs::write(registry(), kept);
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Self {
        let (out, err) = log_file(&log);
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name} ({command:?}): {err}"));
        if let Ok(mut file) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(registry())
        {
            use std::io::Write;
            let program = fs::read_link(format!("/proc/{}/exe", child.id()))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if !program.is_empty() {
                let _ = writeln!(file, "{}\t{}\t{program}", std::process::id(), child.id());
            }
        }
        Self {
            name: name.to_owned(),
            log,
            child,
            killed_on_purpose: false,
            ops_port: 0,
            api_port: None,
            exit: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds it used so far (user + system; Linux).
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.child.id())
    }

    /// `None` while it runs, else how it ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// kill -9, and reap it.
    pub fn kill9(&mut self) {
        self.killed_on_purpose = true;
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU seconds (user + system) process `pid` used so far, from /proc (Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A `redis-server` of our own on its own port, without persistence (a restart starts empty).
pub struct RedisServer {
    pub port: u16,
    log_dir: PathBuf,
    proc: Option<Proc>,
    generation: u32,
}

impl RedisServer {
    pub async fn start(log_dir: &Path) -> Self {
        let mut redis = Self {
            port: free_port(),
            log_dir: log_dir.to_path_buf(),
            proc: None,
            generation: 0,
        };
        redis.spawn().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> PathBuf {
        self.log_dir.join("redis.log")
    }

    async fn spawn(&mut self) {
        self.generation += 1;
        let mut command = Command::new(redis_server());
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.log_dir);
        let mut proc = Proc::spawn(&format!("redis#{}", self.generation), command, self.log());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if redis_ping(self.port).await {
                break;
            }
            if let Some(status) = proc.exited() {
                panic!(
                    "redis-server exited at start ({status})\n{}",
                    log_digest(&self.log(), 20)
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 10 s\n{}",
                log_digest(&self.log(), 20)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.proc = Some(proc);
    }

    /// The fault: kill -9, `down` without a server (a failover takes seconds), then a fresh,
    /// empty server on the same port. Returns when it answers.
    pub async fn restart_empty(&mut self, down: std::time::Duration) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9();
        }
        tokio::time::sleep(down).await;
        self.spawn().await;
    }

    /// Still running?
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.as_mut().and_then(Proc::exited)
    }
}

fn redis_server() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

async fn redis_ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 16];
        let n = stream.read(&mut reply).await?;
        std::io::Result::Ok(reply[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(true))
    )
}

/// A private PostgreSQL cluster: `initdb` into a temporary directory, `pg_ctl` to start, restart
/// and stop it. As root (CI), everything runs as the `postgres` OS user (initdb refuses root).
pub struct PgCluster {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    sockets: PathBuf,
    pub log: PathBuf,
    /// Where the log is copied on drop (the cluster's directory is removed).
    keep_log: PathBuf,
    as_postgres: bool,
    dir: Option<tempfile::TempDir>,
}

fn postgres_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("SWITCHBOARD_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    (bin.join("initdb").exists() && bin.join("pg_ctl").exists())
                        .then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin (initdb, pg_ctl): install it \
             (`./scripts/test --services-only` does) or set SWITCHBOARD_TEST_PG_BIN"
        )
    })
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn id_of(flag: &str, user: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, user])
        .output()
        .unwrap_or_else(|err| panic!("running `id {flag} {user}`: {err}"));
    assert!(
        out.status.success(),
        "running as root, the PostgreSQL cluster needs the `{user}` OS user (initdb refuses \
         root), and `id {flag} {user}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a numeric id")
}

impl PgCluster {
    pub async fn start(keep_log_dir: &Path) -> Self {
        let bin = postgres_bin();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("switchboard-faults-pg-")
            .tempdir()
            .expect("a temporary directory");
        let root = dir.path().to_path_buf();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
        let data = root.join("data");
        let sockets = root.join("sockets");
        let log = root.join("postgres.log");
        fs::write(root.join("owner"), std::process::id().to_string()).expect("the owner file");
        fs::create_dir(&data).expect("the data dir");
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).expect("chmod");
        fs::create_dir(&sockets).expect("the socket dir");
        fs::write(&log, b"").expect("the log file");
        if as_postgres {
            let (uid, gid) = (id_of("-u", "postgres"), id_of("-g", "postgres"));
            for path in [&data, &sockets, &log] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .unwrap_or_else(|err| panic!("chown {}: {err}", path.display()));
            }
        }
        let cluster = Self {
            port: free_port(),
            bin,
            data,
            sockets,
            log,
            keep_log: keep_log_dir.join("postgres.log"),
            as_postgres,
            dir: Some(dir),
        };
        let out = cluster
            .command("initdb")
            .arg("-D")
            .arg(&cluster.data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = cluster
            .pg_ctl(&["start"])
            .output()
            .expect("running pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log_digest(&cluster.log, 30)
        );
        cluster
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // The postgres user may not be able to read the test's working directory.
        command.current_dir("/");
        command
    }

    /// `pg_ctl <action>` on this cluster, waiting, with the server options and the log file.
    fn pg_ctl(&self, action: &[&str]) -> Command {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=300",
            self.port,
            self.sockets.display()
        );
        let mut command = self.command("pg_ctl");
        command
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-o", &options])
            .args(action);
        command
    }

    /// The URL of database `name` (trust authentication, no TLS).
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// The fault: `pg_ctl restart -m fast` (fast shutdown, then start). Returns once the server
    /// accepts connections again.
    pub async fn restart_fast(&self) -> Result<(), String> {
        let command = self.pg_ctl(&["-m", "fast", "restart"]);
        let out = tokio::process::Command::from(command)
            .output()
            .await
            .map_err(|err| format!("running pg_ctl restart: {err}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl restart failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The postmaster's pid, from its pid file.
    fn postmaster_pid(&self) -> Option<u32> {
        fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Is the postmaster running?
    pub fn alive(&self) -> bool {
        self.postmaster_pid()
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let stopped = self
            .pg_ctl(&["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped && let Some(pid) = self.postmaster_pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = fs::copy(&self.log, &self.keep_log);
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}
