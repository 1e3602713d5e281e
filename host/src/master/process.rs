//! Worker processes: starting one (its command line, environment and I/O tasks),
//! measuring its CPU, and the wait before a dead one is restarted.
//!
//! Owns the child process and its pipes; it reports to the master task only by
//! message, and must never touch the master's state.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::handle::Message;
use crate::ipc::{FromWorker, ToWorker, WorkerStart, read_frame, write_frame};

/// First wait before restarting a worker that died; doubles per crash up to the last.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(500);
const LAST_RESTART_DELAY: Duration = Duration::from_secs(30);

/// CPU percent from successive readings of a process's CPU seconds.
#[derive(Debug, Default)]
pub(super) struct CpuMeter {
    last: Option<(Instant, f64)>,
    pub(super) percent: f64,
}

impl CpuMeter {
    /// CPU seconds at the last reading.
    pub(super) fn seconds(&self) -> f64 {
        self.last.map_or(0.0, |(_, seconds)| seconds)
    }

    pub(super) fn sample(&mut self, now: Instant, cpu_seconds: Option<f64>) {
        let Some(seconds) = cpu_seconds else { return };
        if let Some((at, before)) = self.last {
            let wall = now.duration_since(at).as_secs_f64();
            if wall > 0.0 {
                self.percent = ((seconds - before) / wall * 100.0).max(0.0);
            }
        }
        self.last = Some((now, seconds));
    }
}

pub(super) fn restart_delay(crashes: u32) -> Duration {
    let doublings = crashes.saturating_sub(1).min(16);
    FIRST_RESTART_DELAY.saturating_mul(1 << doublings).min(LAST_RESTART_DELAY)
}

/// The environment variables a worker inherits (in any case); no other.
const WORKER_ENV: &[&str] = &["RUST_LOG", "RUST_BACKTRACE", "SSL_CERT_FILE", "SSL_CERT_DIR", "TZ"];

/// Starts `superpeer worker` and its I/O tasks; returns its pid, its inbox and a switch
/// that kills it.
pub(super) fn spawn_process(
    log_format: &str,
    channel: &str,
    start: WorkerStart,
    master: mpsc::Sender<Message>,
) -> std::io::Result<(u32, mpsc::Sender<ToWorker>, oneshot::Sender<()>)> {
    // Started from the running binary itself, even after an upgrade replaced the file
    // it came from (whose path then ends in " (deleted)"): master and workers stay one
    // build. `ps` still shows the binary's path.
    let binary = std::env::current_exe()?;
    let name = binary.display().to_string().trim_end_matches(" (deleted)").to_string();
    let running = std::path::Path::new("/proc/self/exe");
    let exe = if running.exists() { running.to_path_buf() } else { binary };
    let mut command = tokio::process::Command::new(exe);
    // A worker parses what strangers send; it gets no secret of the master's (the
    // access token, cloud credentials), only what it needs to log and to fetch. No
    // proxy either: its fetches go direct, where the origin rules can check them.
    command.env_clear();
    for (key, value) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| WORKER_ENV.contains(&k.to_ascii_uppercase().as_str())) {
            command.env(key, value);
        }
    }
    let mut child = command
        .arg0(name)
        // `=`: a channel id may begin with `-`.
        .args(["--log-format", log_format, "worker", &format!("--channel={channel}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| std::io::Error::other("worker exited at once"))?;
    let mut stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("no worker stdin"))?;
    let mut stdout =
        child.stdout.take().ok_or_else(|| std::io::Error::other("no worker stdout"))?;

    let (to_worker, mut inbox) = mpsc::channel::<ToWorker>(16);
    let _ = to_worker.try_send(ToWorker::Start(Box::new(start)));
    tokio::spawn(async move {
        while let Some(message) = inbox.recv().await {
            let last = matches!(message, ToWorker::Stop);
            // After `stop` the pipe closes too, so the worker's reader ends either way.
            if write_frame(&mut stdin, &message).await.is_err() || last {
                break;
            }
        }
    });
    let reader_master = master.clone();
    tokio::spawn(async move {
        loop {
            match read_frame::<_, FromWorker>(&mut stdout).await {
                Ok(Some(message)) => {
                    if reader_master
                        .send(Message::FromWorker(pid, Box::new(message)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // A worker that garbles its channel is no use: have it ended, so it
                    // is restarted.
                    let _ = reader_master.send(Message::ChannelBroken(pid, e.to_string())).await;
                    break;
                }
            }
        }
    });
    let (kill, killed) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            _ = killed => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let code = status.ok().and_then(|s| s.code());
        let _ = master.send(Message::Exited(pid, code)).await;
    });
    Ok((pid, to_worker, kill))
}
