//! A worker process: seeds one channel. Spawned by the master (`superpeer worker`),
//! never by hand; talks to it over stdin/stdout frames (see [`crate::ipc`]) and logs to
//! stderr.
//!
//! It owns one policy runner and a single-threaded event loop: timers, the master's
//! messages, and (as the data plane grows) tracker connections, peers and fetches. It
//! must never let a policy command through that the runner did not admit.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::counters::Counters;
use crate::dataplane::origin::OriginRules;
use crate::dataplane::{DataPlaneLimits, Driver, Input};
use crate::ipc::{FromWorker, ToWorker, WorkerReport, read_frame, write_frame};
use crate::policy::wire::Event;
use crate::policy::{Clock, PolicyEngine, PolicyRunner};

/// How often the worker reports its figures to the master.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long a stopping worker waits for its tracker connections to send their last
/// messages and close; well within the time the master gives a worker to exit.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Runs a worker on this process's stdin and stdout until the master says stop or
/// goes away.
pub fn main() -> anyhow::Result<()> {
    // The caller's span (the worker's pid and channel) is entered for good on every
    // thread the runtime starts for blocking work (disk I/O), so their log lines carry
    // it as the event loop's do.
    let span = tracing::Span::current();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(move || std::mem::forget(span.clone().entered()))
        .build()
        .context("could not start the worker's event loop")?;
    let result = runtime.block_on(run(tokio::io::stdin(), tokio::io::stdout()));
    // The stdin reader sits in a blocking read that only the master's closing the pipe
    // would end; do not wait for it.
    runtime.shutdown_background();
    result
}

pub async fn run<R, W>(mut input: R, mut output: W) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let Some(ToWorker::Start(start)) = read_frame(&mut input).await? else {
        bail!("the master's first message must be `start`");
    };
    let engine = PolicyEngine::new(start.limits.clone())?;
    let policy = engine.load_precompiled(&start.policy)?;
    let epoch = Instant::now();
    let clock = move || Clock {
        monotonic: epoch.elapsed(),
        wall_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
    };
    let config = start.seed.clone();
    let mut runner = match PolicyRunner::start(engine.clone(), policy, config, clock()) {
        Ok(runner) => runner,
        Err(error) => {
            let reason = error.to_string();
            let _ = write_frame(&mut output, &FromWorker::Failed { reason }).await;
            return Err(error.into());
        }
    };
    tracing::info!(policy = %runner.policy(), "worker started");
    write_frame(&mut output, &FromWorker::Ready { policy: runner.policy().clone() }).await?;

    // Reading a frame is not cancel-safe, so one task reads and the loop selects on a
    // channel.
    let (messages, mut inbox) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let message = read_frame::<_, ToWorker>(&mut input).await;
            let stop = !matches!(message, Ok(Some(_)));
            if messages.send(message).await.is_err() || stop {
                break;
            }
        }
    });

    let limits = DataPlaneLimits {
        udp_bind: start.udp_bind,
        udp_ports: start.udp_ports,
        advertise_ip: start.advertise_ip,
        disk_cache: start.disk_cache.clone(),
        origins: OriginRules::new(start.seed.manifest_url.as_deref(), start.origin_allow.clone())
            .with_trackers(&start.seed.trackers),
        memory_budget: start.memory_budget,
        fetch_timeout: start.origin_timeout,
        stall_timeout: start.viewer_stall,
        ..DataPlaneLimits::default()
    };
    let (mut plane, mut io) = Driver::new(limits).context("could not set up the data plane")?;
    let mut report = tokio::time::interval(REPORT_EVERY);
    let mut events: Vec<Event> = Vec::new();
    loop {
        let now = clock();
        events.extend(runner.take_due_timers(now.monotonic));
        if !events.is_empty() || runner.wants_turn(now.monotonic) {
            let commands = runner.handle(now, std::mem::take(&mut events));
            events = plane.handle(Input::commands(commands));
            if !events.is_empty() {
                // Let the master's messages in between turns that feed each other.
                tokio::task::yield_now().await;
                continue;
            }
        }
        let wake = runner.next_wakeup().map(|at| tokio::time::Instant::from_std(epoch + at));
        let due = plane.next_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            message = inbox.recv() => match message {
                Some(Ok(Some(ToWorker::Swap { policy }))) => {
                    let started = Instant::now();
                    let result = engine
                        .load_precompiled(&policy)
                        .and_then(|policy| runner.swap(clock(), policy))
                        .map(|report| report.to)
                        .map_err(|e| e.to_string());
                    if result.is_ok() {
                        runner.record_swap_pause(started.elapsed());
                    }
                    write_frame(&mut output, &FromWorker::Swapped { result }).await?;
                }
                Some(Ok(Some(ToWorker::Start(_)))) => tracing::warn!("ignoring a second start message"),
                Some(Ok(Some(ToWorker::Stop))) | Some(Ok(None)) | None => break,
                Some(Err(e)) => bail!("the master's channel failed: {e}"),
            },
            inputs = plane.next_inputs(&mut io) => events.extend(plane.handle(inputs)),
            () = sleep_until(wake) => {}
            () = sleep_until(due) => {
                events.extend(plane.handle([Input::Timeout]));
            }
            _ = report.tick() => {
                let policy = runner.stats();
                let data = plane.plane();
                let figures = WorkerReport {
                    viewers: data.viewers() as u32,
                    counters: Counters {
                        policy_traps: policy.faults,
                        policy_rollbacks: policy.rollbacks,
                        policy_swaps: policy.swaps,
                        ..data.counters()
                    },
                    disk_cache_size: plane.disk_cache_size(),
                    trackers: runner.tables().trackers_open() as u32,
                    segments: data.cache().len() as u32,
                    memory_cache_size: data.cache().memory_bytes(),
                    policy,
                };
                write_frame(&mut output, &FromWorker::Report(Box::new(figures))).await?;
            }
        }
    }
    tracing::info!("worker stopping");
    // The policy's last turn: what it sends now (goodbyes to trackers) goes out before
    // the connections close. Whatever else it asks for has no future.
    events.push(Event::Stopping);
    plane.handle(Input::commands(runner.handle(clock(), events)));
    plane.shutdown(io, STOP_GRACE).await;
    Ok(())
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
