//! The tests' Chromium: node drivers (`swarm.mjs`, `viewers.mjs`, `monitor.mjs`) that
//! each run an unmodified browser, and what they report. A driver is stopped, with its
//! browser, when its handle drops, pass or fail.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{TOKEN, alive, signal};

/// A driver process, sent TERM (it closes its browser) and waited for when dropped.
struct DriverProcess(Child);

impl Drop for DriverProcess {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            signal("TERM", self.0.id());
            let _ = self.0.wait();
        }
    }
}

/// `node <script>` for a driver in `tests/support`, once Chromium is known to be there.
fn driver(script: &str) -> Command {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is not installed: run `just system-deps`"
    );
    let mut command = Command::new("node");
    command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support").join(script));
    command
}

/// `node swarm.mjs`: the viewers, watching until dropped (or [`Swarm::finish`]).
pub struct Swarm {
    child: DriverProcess,
    stdin: Option<ChildStdin>,
    latest: Arc<Mutex<Option<Value>>>,
    summary: Arc<Mutex<Option<Value>>>,
}

impl Swarm {
    pub fn start(page: &str) -> Swarm {
        let mut child = driver("swarm.mjs")
            .args(["--page", page])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take().unwrap());
        let (latest, summary) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None)));
        let (ticks, end) = (latest.clone(), summary.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let message: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                match message["type"].as_str() {
                    Some("tick") => *ticks.lock().unwrap() = Some(message["viewers"].clone()),
                    Some("summary") => *end.lock().unwrap() = Some(message),
                    _ => {}
                }
            }
        });
        Swarm { child: DriverProcess(child), stdin, latest, summary }
    }

    /// Waits until the viewers' latest state satisfies `done`, within `patience`;
    /// returns that state, or panics with it.
    pub fn wait_until(
        &self,
        what: &str,
        patience: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + patience;
        loop {
            let latest = self.latest.lock().unwrap().clone();
            if let Some(Value::Array(viewers)) = &latest
                && done(viewers)
            {
                return viewers.clone();
            }
            assert!(self.child_alive(), "the swarm driver exited; last state: {latest:?}");
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last state: {latest:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The viewers' latest state (empty before the first tick).
    pub fn latest(&self) -> Vec<Value> {
        match self.latest.lock().unwrap().clone() {
            Some(Value::Array(viewers)) => viewers,
            _ => Vec::new(),
        }
    }

    pub fn child_alive(&self) -> bool {
        alive(self.child.0.id())
    }

    /// Stops the viewers and returns what each saw.
    pub fn finish(mut self) -> Value {
        drop(self.stdin.take());
        let status = self.child.0.wait().unwrap();
        assert!(status.success(), "the swarm driver failed: {status}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(summary) = self.summary.lock().unwrap().take() {
                return summary;
            }
            assert!(Instant::now() < deadline, "the swarm driver printed no summary");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Plays `page` (`player.html` or `swarmcloud.html`) in `count` Chromium tabs for
/// `seconds`; what each viewer saw (`viewers.mjs`'s summary).
pub fn watch(page: &str, count: usize, seconds: u32) -> Vec<Value> {
    let child = driver("viewers.mjs")
        .args(["--page", page, "--viewers", &count.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut viewers = DriverProcess(child);
    let stdout = viewers.0.stdout.take().unwrap();
    let mut summary = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let message: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if message["type"] == "summary" {
            summary = Some(message["viewers"].as_array().unwrap().clone());
        }
    }
    let status = viewers.0.wait().unwrap();
    assert!(status.success(), "the viewer driver failed: {status}");
    summary.expect("the viewer driver printed no summary")
}

/// Where each segment a viewer of [`watch`] loaded came from, in the order they
/// arrived: `name:source` for each, space-separated.
pub fn loaded_sources(viewer: &Value) -> String {
    let sources: Vec<String> = viewer["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let url = s["url"].as_str().unwrap_or_default();
            format!(
                "{}:{}",
                url.rsplit('/').next().unwrap_or(url),
                s["source"].as_str().unwrap_or("?")
            )
        })
        .collect();
    sources.join(" ")
}

/// Runs `monitor.mjs` against `page` with `options` (`--look`, `--fleet`, ...); its JSON
/// report. Stopped with its browser if the test fails first.
pub fn drive_monitor(page: &str, screenshot: &Path, options: &[&str]) -> Value {
    let child = driver("monitor.mjs")
        .args(["--url", page, "--token", TOKEN, "--screenshot"])
        .arg(screenshot)
        .args(options)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut monitor = DriverProcess(child);
    let mut report = String::new();
    monitor.0.stdout.take().unwrap().read_to_string(&mut report).unwrap();
    let status = monitor.0.wait().unwrap();
    assert!(status.success(), "the monitor driver failed: {status}");
    serde_json::from_str(report.trim()).unwrap_or_else(|e| panic!("{e}: {report}"))
}
