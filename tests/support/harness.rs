//! What the process-level tests share: a `superpeer serve` on a port the OS picked, a
//! real bittorrent-tracker, signals, and directories that vanish with the test.
//! Every process started here is stopped when its handle drops, pass or fail.

// Each test binary uses only part of this file.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Seek as _, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "browser.rs"]
mod browser;
// Each test binary uses only part of this file.
#[allow(unused_imports)]
pub use browser::*;

pub const TOKEN: &str = "test-token";

/// The `.env` a master reads, in its data directory; absent unless a test writes it.
pub const ENV_FILE: &str = "superpeer.env";
/// Longest any awaited condition may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(60);
/// How many segments behind the live edge the players play live streams (hls.js's
/// default is 3). Sites that share live streams over P2P play further back, so that
/// peers have the newest segments before they are needed: with the default, what is
/// left for P2P is whatever arrives within a second or two of a segment's appearing.
pub const LIVE_SYNC_SEGMENTS: u32 = 7;

pub struct Superpeer {
    pub child: Child,
    pub addr: String,
    /// Everything the master (and its workers) logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Superpeer {
    pub fn start(data_dir: &Path) -> Superpeer {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Superpeer {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// Started with `extra` flags and `env` added to the test's environment.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Superpeer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_superpeer"))
            .envs(env.iter().copied())
            .args(["serve", "--port", "0", "--bind", "127.0.0.1", "--access-token", TOKEN])
            .args(extra)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--env-file")
            // Defaults, unless the test wrote this file first.
            .arg(data_dir.join(ENV_FILE))
            // SUPERPEER_TEST_LOG=debug shows more when a test is being looked into; the
            // tests read only lines logged at info.
            .env("RUST_LOG", std::env::var("SUPERPEER_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .env("SUPERPEER_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (found, address) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                if let Some(at) = line.find("superpeer listening on http://") {
                    // Text or JSON logs: the address ends where host:port characters do.
                    let addr = line[at + "superpeer listening on http://".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                        .collect();
                    let _ = found.send(addr);
                }
                // Keep draining so the master never blocks on a full pipe.
            }
        });
        // Owned before waiting, so a failed start still stops the process.
        let mut superpeer = Superpeer { child, addr: String::new(), log };
        superpeer.addr = address.recv_timeout(PATIENCE).expect("superpeer did not start listening");
        superpeer
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        self.request_as(Some(TOKEN), method, path, body)
    }

    pub fn request_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> (u16, Value) {
        let token = token.map(|t| format!("X-ACCESS-TOKEN: {t}\r\n")).unwrap_or_default();
        let (status, _, body) = self.request_raw(method, path, &token, body);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// One HTTP/1.1 request with `headers` (each line ending in CRLF) as given; the
    /// status, the response's head and its body as text.
    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> (u16, String, String) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response);
        let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (status, head.to_string(), body.to_string())
    }

    pub fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, answer) = self.request(method, path, body.to_string().as_bytes());
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer
    }

    pub fn stats(&self) -> Value {
        self.ok("GET", "/stats", Value::Null)
    }

    /// Polls `/stats` until `done` holds; returns those stats.
    pub fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_path(what, "/stats", done)
    }

    /// Polls `GET path` until `done` holds; returns that answer.
    pub fn wait_for_path(&self, what: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer = self.ok("GET", path, Value::Null);
            if done(&answer) {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last {path}: {answer:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// After a failure: the whole log goes to a file that outlives the test, and its end
    /// to stderr.
    fn keep_log(&self) {
        let Ok(log) = self.log.lock() else { return };
        let file = std::env::temp_dir().join(format!("superpeer-{}.log", self.child.id()));
        let _ = std::fs::write(&file, log.join("\n"));
        let tail = &log[log.len().saturating_sub(40)..];
        eprintln!("superpeer's log is in {}; it ends:\n{}", file.display(), tail.join("\n"));
    }

    /// SIGTERM, then wait for a clean exit: every worker stopped when asked, none had
    /// to be killed.
    pub fn stop(mut self) {
        signal("TERM", self.pid());
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "superpeer did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "superpeer exited with {status}");
        let log = self.log.lock().unwrap();
        let killed: Vec<&String> =
            log.iter().filter(|l| l.contains("did not stop in time")).collect();
        assert!(killed.is_empty(), "workers had to be killed: {killed:?}");
    }
}

impl Drop for Superpeer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_log();
        }
        if self.child.try_wait().ok().flatten().is_none() {
            signal("TERM", self.child.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn signal(name: &str, pid: u32) {
    let status =
        Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Waits until `pid` has exited; false if it is still running after the patience.
pub fn exits(pid: u32) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

pub fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// A directory of this test's own, removed when the test ends, pass or fail.
pub struct TempDir(pub PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes all of superpeer's workers have sent viewers, as a `/stats` answer reports.
pub fn uploaded_by_workers(stats: &Value) -> u64 {
    stats["workers"].as_object().unwrap().values().map(|w| w["uploaded"].as_u64().unwrap()).sum()
}

/// The running workers of a channel, as (pid, stats), as a `/stats` answer reports.
pub fn workers_of(stats: &Value, channel: &str) -> Vec<(u32, Value)> {
    stats["workers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, w)| w["channelId"] == channel && w["state"] == "running")
        .map(|(pid, w)| (pid.parse().unwrap(), w.clone()))
        .collect()
}

pub fn data_dir(test: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("superpeer-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// One of the Node.js helpers in `tests/support` (`tracker.mjs`, `hls-origin.mjs`):
/// started with piped stdin, which it watches so it never outlives the test, and ready
/// once it prints `listening <port>`. What it prints after that is kept in `lines`.
pub struct NodeService {
    pub child: Child,
    pub port: u16,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl NodeService {
    pub fn start(script: &str, args: &[&std::ffi::OsStr]) -> NodeService {
        let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support");
        assert!(
            support.join("node_modules/.package-lock.json").is_file(),
            "the test support packages are not installed: run `just node-deps`"
        );
        let mut child = Command::new("node")
            .arg(support.join(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node is needed for the test helpers");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (first, first_line) = mpsc::channel();
        let kept = lines.clone();
        // Draining to the end keeps the helper from blocking on a full pipe.
        std::thread::spawn(move || {
            let mut output = BufReader::new(stdout).lines().map_while(Result::ok);
            let _ = first.send(output.next().unwrap_or_default());
            for line in output {
                kept.lock().unwrap().push(line);
            }
        });
        // Owned before checking the line, so a failed start still stops the process.
        let mut service = NodeService { child, port: 0, lines };
        // An origin encodes a whole VOD before it listens: minutes on a busy machine.
        let line = first_line.recv_timeout(5 * PATIENCE).unwrap_or_default();
        service.port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("{script} said {line:?}"));
        service
    }
}

impl Drop for NodeService {
    /// Closing stdin asks the helper to stop what it started (the origin its ffmpeg);
    /// a helper that does not exit in time is killed.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hls-origin.mjs`: ffmpeg-made HLS of `kind` ("vod" or "live") written to `media`
/// and served on a port the OS picked.
pub struct HlsOrigin {
    pub service: NodeService,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub manifest: String,
}

impl HlsOrigin {
    pub fn start(media: &Path, kind: &str) -> HlsOrigin {
        Self::start_with(media, kind, &[])
    }

    /// With more of `hls-origin.mjs`'s options (`--seconds`, `--size`, `--fmp4`, ...).
    pub fn start_with(media: &Path, kind: &str, options: &[&str]) -> HlsOrigin {
        let kind_flag = format!("--{kind}");
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["--dir".as_ref(), media.as_os_str(), kind_flag.as_ref()];
        args.extend(options.iter().map(|o| std::ffi::OsStr::new(*o)));
        let service = NodeService::start("hls-origin.mjs", &args);
        let url = format!("http://127.0.0.1:{}", service.port);
        let manifest = format!("{url}/{kind}/master.m3u8");
        HlsOrigin { service, url, manifest }
    }

    pub fn channel(&self) -> String {
        channel_of(&self.manifest)
    }
}

/// Seeds `origin`'s VOD on `tracker` (kept alive, room for 100 viewers, `settings` for
/// the policy) and waits until the worker holds its `segments` and is on the tracker.
pub fn seed_vod(
    master: &Superpeer,
    origin: &VodOrigin,
    tracker: &Tracker,
    segments: u64,
    settings: Value,
) {
    let seed = serde_json::json!({"list": [{
        "channel": origin.channel(), "keepAlive": true, "signal1": tracker.url,
        "maxConnections": 100, "settings": settings,
    }]});
    master.ok("POST", "/seed", seed);
    master.wait_for("the VOD prefetched", |s| {
        s["workers"]
            .as_object()
            .unwrap()
            .values()
            .any(|w| w["segments"] == segments && w["trackers"] == 1)
    });
}

/// A real bittorrent-tracker (WebSocket) on a port the OS picked.
pub struct Tracker {
    pub service: NodeService,
    pub url: String,
}

impl Tracker {
    pub fn start() -> Tracker {
        let service = NodeService::start("tracker.mjs", &[]);
        let url = format!("ws://127.0.0.1:{}", service.port);
        Tracker { service, url }
    }
}

/// A SwarmCloud-compatible tracker (its HTTP API at `url`, `http://127.0.0.1:<port>/v1`)
/// or signal server (`url`, `ws://127.0.0.1:<port>`): `tests/support/swarmcloud.mjs`.
pub struct SwarmCloudService {
    pub service: NodeService,
    pub url: String,
}

impl SwarmCloudService {
    pub fn tracker() -> SwarmCloudService {
        let service = NodeService::start("swarmcloud.mjs", &["tracker".as_ref()]);
        let url = format!("http://127.0.0.1:{}/v1", service.port);
        SwarmCloudService { service, url }
    }

    pub fn signal() -> SwarmCloudService {
        SwarmCloudService::signal_on(0)
    }

    /// A signal relay on `port` (0: one the OS picks), as one that comes back where it
    /// was.
    pub fn signal_on(port: u16) -> SwarmCloudService {
        let port = port.to_string();
        let service = NodeService::start("swarmcloud.mjs", &["signal".as_ref(), port.as_ref()]);
        let url = format!("ws://127.0.0.1:{}", service.port);
        SwarmCloudService { service, url }
    }
}

/// aquatic_ws, the WebTorrent tracker behind the large public trackers, on a port the
/// OS picked (found among the sockets it listens on), with its default limits (it
/// forwards at most 10 offers per announce). `just test` installs it (`cargo install
/// aquatic_ws`); `AQUATIC_WS` names another binary.
pub struct Aquatic {
    /// A shell that runs aquatic_ws and stops it when its stdin closes (aquatic_ws does
    /// not watch its own), so it never outlives the test, killed or not.
    pub child: Child,
    pub pid: u32,
    pub url: String,
    _dir: TempDir,
}

impl Aquatic {
    pub fn start() -> Aquatic {
        let dir = data_dir(&format!("aquatic-{}", unique()));
        let config = dir.join("aquatic.toml");
        std::fs::write(
            &config,
            "socket_workers = 1\nswarm_workers = 1\nlog_level = \"warn\"\n\n[network]\naddress = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        let binary = std::env::var("AQUATIC_WS").unwrap_or_else(|_| "aquatic_ws".into());
        let (child, pid) = guarded(&binary, &["-c".as_ref(), config.as_os_str()]);
        let mut aquatic = Aquatic { child, pid, url: String::new(), _dir: dir };
        let deadline = Instant::now() + PATIENCE;
        let port = loop {
            if let Some(port) = listening_port(pid) {
                break port;
            }
            assert!(alive(pid), "{binary} exited at start (is it installed? `just tools`)");
            assert!(Instant::now() < deadline, "aquatic_ws never listened");
            std::thread::sleep(Duration::from_millis(20));
        };
        aquatic.url = format!("ws://127.0.0.1:{port}");
        aquatic
    }
}

impl Drop for Aquatic {
    fn drop(&mut self) {
        unguard(&mut self.child, self.pid);
    }
}

/// Runs `program` with `args` under a shell that kills it when the shell's stdin
/// closes (for programs that do not watch their own), so it never outlives the test,
/// killed or not. The shell, and the program's pid.
fn guarded(program: &str, args: &[&std::ffi::OsStr]) -> (Child, u32) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"prog="$1"; shift; "$prog" "$@" </dev/null >/dev/null 2>&1 & echo $!; cat >/dev/null; kill $!"#)
        .arg("guard")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let pid: u32 = first.trim().parse().unwrap();
    (child, pid)
}

/// Stops what [`guarded`] started: its stdin closed, then killed if it lingers.
fn unguard(shell: &mut Child, pid: u32) {
    drop(shell.stdin.take());
    if !exits(pid) {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
    let _ = shell.kill();
    let _ = shell.wait();
}

/// A single-node etcd (Debian's `etcd-server`, which `just test` installs) with its
/// data in a directory of its own, on ports the OS picked (a port is taken by binding
/// port 0, then handed to etcd, which cannot tell its own URLs otherwise). It can be
/// killed and started again on the same ports with the same data, as an etcd that
/// comes back.
pub struct EtcdServer {
    running: Option<(Child, u32)>,
    pub url: String,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        let free_port = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (client_port, peer_port) = (free_port(), free_port());
        let dir = data_dir(&format!("etcd-{}", unique()));
        let url = format!("http://127.0.0.1:{client_port}");
        let mut etcd = EtcdServer { running: None, url, client_port, peer_port, dir };
        etcd.resume();
        etcd
    }

    /// Starts it (again), and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.running.is_none(), "etcd is running already");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let args = [
            "--name".to_string(),
            "test".into(),
            "--data-dir".into(),
            self.dir.join("data").display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("test={peer}"),
        ];
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let (shell, pid) = guarded("etcd", &args);
        self.running = Some((shell, pid));
        let deadline = Instant::now() + PATIENCE;
        while !self.healthy() {
            assert!(
                alive(pid),
                "etcd exited at start (is etcd-server installed? `just system-deps`)"
            );
            assert!(Instant::now() < deadline, "etcd never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9, and waits until it is gone.
    pub fn kill(&mut self) {
        let (mut shell, pid) = self.running.take().expect("etcd is running");
        signal("KILL", pid);
        assert!(exits(pid));
        unguard(&mut shell, pid);
    }

    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let request = "GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n";
        let mut answer = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.contains("\"health\":\"true\"")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some((mut shell, pid)) = self.running.take() {
            unguard(&mut shell, pid);
        }
    }
}

/// A number no other caller in this process gets.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The TCP port a process listens on, read from /proc: its sockets' inodes, then the
/// kernel's table of listening sockets.
pub fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        std::fs::read_to_string(table).ok()?.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != "0A" || !inodes.iter().any(|i| i == inode) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
    })
}

/// `text` as a URL path segment or query value: every byte but the unreserved ones
/// percent-encoded.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The peer ids superpeer's workers took in these log lines: the default policy logs
/// each swarm it joins with its peer id.
pub fn logged_peer_ids(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| {
            let at = line.find("peer id ")? + "peer id ".len();
            Some(line.get(at..at + 20)?.to_string())
        })
        .collect()
}

pub fn http_get_json(url: &str) -> Value {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) =
        rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = TcpStream::connect(host).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A VOD origin on 127.0.0.1:0 (its own thread): `/vod/master.m3u8` with one rendition
/// (1280x720, avc1.4d401f, 1.28 Mbit/s), `/vod/720p.m3u8` listing `segments` segments
/// of 2 s, each `segment_bytes` long with content that differs per segment.
pub struct VodOrigin {
    pub base: String,
}

impl VodOrigin {
    pub fn start(segments: usize, segment_bytes: usize) -> VodOrigin {
        use std::fmt::Write as _;
        let (found, address) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                use axum::routing::get;
                let mut media = String::from(
                    "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n",
                );
                for n in 0..segments {
                    write!(media, "#EXTINF:2.0,\nseg{n}.ts\n").unwrap();
                }
                media.push_str("#EXT-X-ENDLIST\n");
                let app = axum::Router::new()
                    .route("/vod/master.m3u8", get(|| async { VOD_MASTER }))
                    .route("/vod/720p.m3u8", get(move || async move { media.clone() }))
                    .route(
                        "/vod/{name}",
                        get(move |axum::extract::Path(name): axum::extract::Path<String>| async move {
                            let n = name.trim_start_matches("seg").trim_end_matches(".ts");
                            vod_segment(n.parse().unwrap_or(0), segment_bytes)
                        }),
                    )
                    // Browser pages (the Chromium seeder) fetch from here too.
                    .layer(axum::middleware::map_response(
                        |mut response: axum::response::Response| async {
                            response.headers_mut().insert(
                                axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                                axum::http::HeaderValue::from_static("*"),
                            );
                            response
                        },
                    ));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                found.send(format!("http://{}/vod", listener.local_addr().unwrap())).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        VodOrigin { base: address.recv_timeout(PATIENCE).unwrap() }
    }

    pub fn manifest(&self) -> String {
        format!("{}/master.m3u8", self.base)
    }

    pub fn media(&self) -> String {
        format!("{}/720p.m3u8", self.base)
    }

    /// The info hash viewers compute for the one rendition (p2p-media-loader 2.3 with
    /// hls.js: bitrate, video codec, size), derived here independently of superpeer.
    pub fn info_hash(&self) -> String {
        info_hash_of_720p(&self.manifest())
    }

    pub fn channel(&self) -> String {
        channel_of(&self.manifest())
    }
}

const VOD_MASTER: &str = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\",RESOLUTION=1280x720\n720p.m3u8\n";

fn vod_segment(n: usize, bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| ((i * 31 + n * 7) % 251) as u8).collect()
}

/// The info hash of the 1280x720 rendition (BANDWIDTH=1280000, avc1.4d401f) of the
/// stream at `manifest`, as viewers compute it.
pub fn info_hash_of_720p(manifest: &str) -> String {
    use base64::Engine as _;
    use sha1::{Digest, Sha1};
    let b64 = base64::engine::general_purpose::STANDARD;
    let short = b64.encode(Sha1::digest(b"1280000-avc1.4d401f-1280-720-----"));
    let swarm = format!("v2-{manifest}-main-{short}");
    b64.encode(&Sha1::digest(swarm.as_bytes())[..15])
}

/// The embedded default policy's component, as `superpeer policy export-default`
/// writes it (into `dir`).
pub fn export_default_policy(dir: &Path) -> Vec<u8> {
    let path = dir.join("default-policy.wasm");
    let status = Command::new(env!("CARGO_BIN_EXE_superpeer"))
        .args(["policy", "export-default"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "superpeer policy export-default failed");
    std::fs::read(path).unwrap()
}

/// The channel id of a stream for the default policy: base64 of its manifest URL.
pub fn channel_of(manifest: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(manifest)
}

/// The bytes a segment key names: a whole file, or `file|first-last` of it.
pub fn origin_bytes(media: &Path, origin: &str, key: &str) -> Vec<u8> {
    let (url, range) = match key.split_once('|') {
        Some((url, range)) => (url, Some(range)),
        None => (key, None),
    };
    let path = media.join(url.strip_prefix(origin).unwrap().trim_start_matches('/'));
    let mut file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match range.and_then(|r| r.split_once('-')) {
        None => {
            let mut all = Vec::new();
            file.read_to_end(&mut all).unwrap();
            all
        }
        Some((first, last)) => {
            let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
            let mut part = vec![0; (last - first + 1) as usize];
            file.seek(SeekFrom::Start(first)).unwrap();
            file.read_exact(&mut part).unwrap();
            part
        }
    }
}

/// Every segment each viewer got over P2P, and every fragment it played, is the
/// origin's, byte for byte; returns how many P2P segments were checked.
pub fn assert_all_from_origin(summary: &Value, media: &Path, origin: &str) -> usize {
    let mut checked = 0;
    for (index, viewer) in summary["viewers"].as_array().unwrap().iter().enumerate() {
        for what in ["p2pHashes", "playedHashes"] {
            for (key, hash) in viewer[what].as_object().unwrap() {
                use sha2::{Digest, Sha256};
                let expected: String = Sha256::digest(origin_bytes(media, origin, key))
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(hash.as_str().unwrap(), expected, "viewer {index}: {what} {key}");
                checked += usize::from(what == "p2pHashes");
            }
        }
    }
    checked
}

/// The channel id the SwarmCloud SDK computes for a stream at `manifest` whose viewers
/// use one signal relay (`Some(url)`) or a main and a backup (`None`): base64 of
/// `encodeURIComponent("host:port/path-without-extension|relay-host:port[8]")`.
pub fn swarmcloud_channel(manifest: &str, single_signal: Option<&str>) -> String {
    use base64::Engine as _;
    let net_loc_and_path = |url: &str| {
        let rest = url.split_once("//").unwrap().1;
        let rest = rest.split(['?', '#']).next().unwrap();
        match rest.find('/') {
            Some(slash) => (rest[..slash].to_string(), rest[slash..].to_string()),
            None => (rest.to_string(), String::new()),
        }
    };
    let (host, path) = net_loc_and_path(manifest);
    let path = path.rfind('.').map_or("", |dot| &path[..dot]).to_string();
    let signal = single_signal.map(|s| net_loc_and_path(s).0).unwrap_or_default();
    let plain = format!("{host}{path}|{signal}[8]");
    // encodeURIComponent leaves these unescaped too.
    let encoded = [("%21", "!"), ("%2A", "*"), ("%27", "'"), ("%28", "("), ("%29", ")")]
        .iter()
        .fold(percent_encode(&plain), |text, (escaped, kept)| text.replace(escaped, kept));
    base64::engine::general_purpose::STANDARD.encode(encoded)
}
