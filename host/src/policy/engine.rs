//! The wasmtime side of policies: one engine per process, compiling and type-checking
//! components, and instances that run one call at a time under limits.
//!
//! This module owns the sandbox: the deny-all WASI context, the memory cap, each call's
//! deadline (enforced with the watchdog) and the host imports (clock, randomness, log). It must never let a guest
//! reach anything else, and never block for longer than a call's deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, Bindings, Pre};
use super::error::{Fault, PolicyError};
use super::limits::PolicyLimits;
use super::watchdog::{Watch, Watchdog, cpu_time_left, thread_cpu_time};
use super::wire::{Command, Event, HostState, LogLevel, PolicyInfo, SeedConfig};

/// The tracing target of policies' log lines. They are limited per instance
/// (`max_log_lines_per_second`, counted in `log_lines_dropped`) and by nothing else.
pub const LOG_TARGET: &str = "policy";

/// The process-wide policy engine: compiles components and creates instances. Cheap to
/// clone; compiling may run on any thread, off the event loop.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    linker: Linker<StoreData>,
    limits: PolicyLimits,
    watchdog: Watchdog,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine").field("limits", &self.inner.limits).finish_non_exhaustive()
    }
}

/// A policy compiled, type-checked against the world and described: ready to
/// instantiate, and to hand to other threads.
#[derive(Clone)]
pub struct CompiledPolicy {
    engine: Engine,
    pre: Pre,
    meta: PolicyMeta,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy").field("meta", &self.meta).finish_non_exhaustive()
    }
}

/// A policy compiled to native code by [`PolicyEngine::precompile`], with the identity
/// of the component it was made from.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Precompiled {
    #[serde(with = "base64_bytes")]
    pub native: Vec<u8>,
    /// Digest and size of the component, not of the native code.
    pub digest: String,
    pub size: usize,
}

impl std::fmt::Debug for Precompiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Precompiled")
            .field("native_bytes", &self.native.len())
            .field("digest", &self.digest)
            .field("size", &self.size)
            .finish()
    }
}

/// What identifies a policy to operators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyMeta {
    /// From the policy's `describe`.
    pub name: String,
    pub version: String,
    /// First 16 hex digits of the SHA-256 of the component's bytes.
    pub digest: String,
    /// Size of the component, in bytes.
    pub size: usize,
    /// The version of the `superpeer:policy` world it was built for.
    #[serde(default)]
    pub world: String,
}

impl std::fmt::Display for PolicyMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.name, self.version, self.digest)
    }
}

impl CompiledPolicy {
    pub fn meta(&self) -> &PolicyMeta {
        &self.meta
    }
}

impl PolicyEngine {
    /// Sets up the engine. Fails only on limits that make no sense or if the
    /// platform refuses the pooling allocator's reservations.
    pub fn new(limits: PolicyLimits) -> Result<Self, PolicyError> {
        limits.validate().map_err(|e| PolicyError::Engine(e.to_string()))?;
        // One linear memory per component, so the per-memory cap is the per-instance
        // cap; a component asking for more fails to instantiate.
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(limits.max_instances)
            .max_core_instances_per_component(16)
            .max_memories_per_component(1)
            .max_tables_per_component(8)
            .total_core_instances(limits.max_instances * 16)
            .total_memories(limits.max_instances)
            .total_tables(limits.max_instances * 8)
            .max_memory_size(limits.memory_bytes);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| PolicyError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        link_std_support(&mut linker).map_err(|e| PolicyError::Engine(format!("{e:#}")))?;
        bindings::add_to_linker(&mut linker).map_err(|e| PolicyError::Engine(format!("{e:#}")))?;

        let watchdog = Watchdog::start(&engine);
        Ok(PolicyEngine { inner: Arc::new(EngineInner { engine, linker, limits, watchdog }) })
    }

    pub fn limits(&self) -> &PolicyLimits {
        &self.inner.limits
    }

    /// Whether the watchdog sleeps for want of guest calls to watch (for tests).
    #[doc(hidden)]
    pub fn watchdog_idle(&self) -> bool {
        self.inner.watchdog.idle()
    }

    /// Compiles a component, checks it against the policy world, and asks it to
    /// describe itself on a scratch instance. Takes tens to hundreds of milliseconds:
    /// call it off the event loop.
    pub fn compile(&self, wasm: &[u8]) -> Result<CompiledPolicy, PolicyError> {
        self.check_component(wasm)?;
        let component = Component::new(&self.inner.engine, wasm)
            .map_err(|e| PolicyError::Invalid(format!("{e:#}")))?;
        self.prepare(component, digest(wasm), wasm.len())
    }

    /// Compiles a component to native code once, for [`PolicyEngine::load_precompiled`]
    /// in other processes of the same build.
    pub fn precompile(&self, wasm: &[u8]) -> Result<Precompiled, PolicyError> {
        self.check_component(wasm)?;
        let native = self
            .inner
            .engine
            .precompile_component(wasm)
            .map_err(|e| PolicyError::Invalid(format!("{e:#}")))?;
        Ok(Precompiled { native, digest: digest(wasm), size: wasm.len() })
    }

    /// Size and format checks before the parser sees the bytes.
    fn check_component(&self, wasm: &[u8]) -> Result<(), PolicyError> {
        let max = self.inner.limits.max_component_bytes;
        if wasm.len() > max {
            return Err(PolicyError::TooLarge { size: wasm.len(), max });
        }
        sniff(wasm)
    }

    /// Loads what [`PolicyEngine::precompile`] made, skipping compilation.
    ///
    /// Only for bytes this program produced itself (the master hands them to its
    /// workers): native code is trusted, so they must never come from outside.
    pub fn load_precompiled(
        &self,
        precompiled: &Precompiled,
    ) -> Result<CompiledPolicy, PolicyError> {
        // SAFETY: wasmtime checks that the bytes were made by this wasmtime version with
        // a compatible configuration; the bytes themselves come only from `precompile`
        // within this program (documented above), so their native code is ours.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.inner.engine, &precompiled.native) }
            .map_err(|e| PolicyError::Invalid(format!("{e:#}")))?;
        self.prepare(component, precompiled.digest.clone(), precompiled.size)
    }

    fn prepare(
        &self,
        component: Component,
        digest: String,
        size: usize,
    ) -> Result<CompiledPolicy, PolicyError> {
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PolicyError::WrongWorld(format!("{e:#}")))?;
        let pre = Pre::new(instance_pre).map_err(PolicyError::WrongWorld)?;
        let label = format!("component {digest}");
        let world = pre.world().to_string();
        let mut policy = CompiledPolicy {
            engine: self.inner.engine.clone(),
            pre,
            meta: PolicyMeta { name: String::new(), version: String::new(), digest, size, world },
        };
        let start = |fault| PolicyError::Start { policy: label.clone(), fault };
        let mut instance = self.instantiate(&policy, Clock::default()).map_err(start)?;
        let info = instance.describe().map_err(start)?;
        policy.meta.name = info.name.chars().take(64).collect();
        policy.meta.version = info.version.chars().take(64).collect();
        Ok(policy)
    }

    /// Whether `policy` was compiled by this engine: instances can only be made by the
    /// engine that compiled them.
    pub fn compiled(&self, policy: &CompiledPolicy) -> bool {
        Engine::same(&self.inner.engine, &policy.engine)
    }

    /// A fresh instance of a compiled policy, not yet initialised.
    pub(crate) fn instantiate(
        &self,
        policy: &CompiledPolicy,
        clock: Clock,
    ) -> Result<PolicyInstance, Fault> {
        if !self.compiled(policy) {
            return Err(Fault::Trap(format!("{} was compiled by another engine", policy.meta)));
        }
        let limits = &self.inner.limits;
        let data = StoreData {
            wasi: WasiCtx::builder().max_random_size(64 << 10).build(),
            table: ResourceTable::new(),
            hostcall_budget: limits.max_output_bytes,
            limiter: MemoryCap { cap: limits.memory_bytes, hit: false },
            clock,
            rng: SmallRng::from_os_rng(),
            log: GuestLog::new(&policy.meta.name, limits),
            call_deadline: limits.init_deadline,
            call_cpu_start: None,
            watch: None,
        };
        let mut store = Store::new(&self.inner.engine, data);
        store.limiter(|data| &mut data.limiter);
        // Bounds what the host copies out of one call (the command list, log lines):
        // strings in many commands may all point at the same guest buffer.
        store.set_hostcall_fuel(limits.max_output_bytes);
        store.data_mut().table.set_max_capacity(256);
        store.epoch_deadline_callback(|mut store| {
            let data = store.data_mut();
            // The watchdog runs on wall time; the deadline is CPU time of the calling
            // thread, so a call preempted on a busy machine is given back the time it
            // did not run. A guest that loops still burns CPU and is stopped.
            let now = thread_cpu_time();
            Ok(match cpu_time_left(data.call_deadline, data.call_cpu_start, now) {
                Some(left) => {
                    if let Some(watch) = &data.watch {
                        watch.extend(left);
                    }
                    UpdateDeadline::Continue(1)
                }
                None => UpdateDeadline::Interrupt,
            })
        });
        // Instantiation runs the component's start-up code, which must obey a deadline too.
        begin_call(&mut store, &self.inner.watchdog, limits.init_deadline);
        let instantiated = policy.pre.instantiate(&mut store);
        store.data_mut().watch = None;
        let bindings = instantiated.map_err(|e| classify(&store, e, limits.init_deadline))?;
        Ok(PolicyInstance {
            store,
            bindings,
            engine: self.clone(),
            busy: Duration::ZERO,
            slowest_handle: Duration::ZERO,
        })
    }
}

/// Links the WASI interfaces a Rust `std` guest imports whether it uses them or not:
/// environment (empty), exit, stdio (stdin empty, output discarded), terminals, streams,
/// poll and randomness. Clocks, the filesystem and sockets are left out on purpose: a
/// policy that imports them is refused when it is loaded, so none can sleep, wait on a
/// timer inside the host, or reach outside. Its clock is the host's `monotonic-ms`.
fn link_std_support(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::p2::bindings::{cli, random, sync};
    use wasmtime_wasi::random::WasiRandom;

    struct Table;
    impl wasmtime::component::HasData for Table {
        type Data<'a> = &'a mut ResourceTable;
    }

    let l = linker;
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<_, Table>(l, |d| &mut d.table)?;
    sync::io::poll::add_to_linker::<_, Table>(l, |d| &mut d.table)?;
    sync::io::streams::add_to_linker::<_, Table>(l, |d| &mut d.table)?;
    random::random::add_to_linker::<_, WasiRandom>(l, |d| d.wasi.random())?;
    random::insecure::add_to_linker::<_, WasiRandom>(l, |d| d.wasi.random())?;
    random::insecure_seed::add_to_linker::<_, WasiRandom>(l, |d| d.wasi.random())?;
    cli::exit::add_to_linker::<_, WasiCli>(l, <StoreData as WasiCliView>::cli)?;
    cli::environment::add_to_linker::<_, WasiCli>(l, <StoreData as WasiCliView>::cli)?;
    cli::stdin::add_to_linker::<_, WasiCli>(l, <StoreData as WasiCliView>::cli)?;
    cli::stdout::add_to_linker::<_, WasiCli>(l, <StoreData as WasiCliView>::cli)?;
    cli::stderr::add_to_linker::<_, WasiCli>(l, <StoreData as WasiCliView>::cli)?;
    cli::terminal_input::add_to_linker::<_, WasiCli>(l, <StoreData as WasiCliView>::cli)?;
    cli::terminal_output::add_to_linker::<_, WasiCli>(l, <StoreData as WasiCliView>::cli)?;
    cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, <StoreData as WasiCliView>::cli)?;
    cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, <StoreData as WasiCliView>::cli)?;
    cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, <StoreData as WasiCliView>::cli)?;
    Ok(())
}

/// Native code travels base64-encoded: JSON would spend several bytes on each.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Names the two most common upload mistakes before the parser's less helpful words.
fn sniff(wasm: &[u8]) -> Result<(), PolicyError> {
    if !wasm.starts_with(b"\0asm") {
        return Err(PolicyError::Invalid("no `\\0asm` header: this is not WebAssembly".into()));
    }
    // A core module has version 1 in its preamble; components use their own layer.
    if wasm.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Err(PolicyError::Invalid(
            "it is a core WebAssembly module, not a component; build the policy for wasm32-wasip2"
                .into(),
        ));
    }
    Ok(())
}

fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The time a call sees: fixed for the whole call, passed in by the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    /// Time since the worker started.
    pub monotonic: Duration,
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
}

/// One running instance. Any fault leaves it unusable: the caller drops it.
pub(crate) struct PolicyInstance {
    store: Store<StoreData>,
    bindings: Bindings,
    /// Its engine: the limits it runs under and the watchdog that holds it to them.
    engine: PolicyEngine,
    /// Time spent inside the guest.
    busy: Duration,
    /// The most CPU time one `handle` call took (wall time where the platform has no
    /// thread CPU clock): how near the policy comes to its call deadline.
    slowest_handle: Duration,
}

impl PolicyInstance {
    pub(crate) fn init(
        &mut self,
        clock: Clock,
        config: &SeedConfig,
        prior: Option<&[u8]>,
        state: &HostState,
    ) -> Result<(), Fault> {
        let deadline = self.engine.limits().init_deadline;
        self.call(clock, deadline, |b, s| b.call_init(s, config, prior, state))?
            .map_err(|reason| Fault::InitRefused(reason.chars().take(1000).collect()))
    }

    pub(crate) fn handle(&mut self, clock: Clock, events: &[Event]) -> Result<Vec<Command>, Fault> {
        let payload: usize = events.iter().map(super::wire::payload_bytes).sum();
        // The runner begins every instance's life with `started`.
        let starting = events.first() == Some(&Event::Started);
        let deadline = self.engine.limits().handle_deadline(events.len(), payload, starting);
        let (result, took) = self.timed_call(clock, deadline, |b, s| b.call_handle(s, events));
        self.slowest_handle = self.slowest_handle.max(took);
        result
    }

    /// The most CPU time one `handle` call took so far.
    pub(crate) fn slowest_handle(&self) -> Duration {
        self.slowest_handle
    }

    pub(crate) fn snapshot(&mut self, clock: Clock) -> Result<Vec<u8>, Fault> {
        let deadline = self.engine.limits().init_deadline;
        self.call(clock, deadline, |b, s| b.call_snapshot(s))
    }

    pub(crate) fn describe(&mut self) -> Result<PolicyInfo, Fault> {
        let deadline = self.engine.limits().init_deadline;
        self.call(Clock::default(), deadline, |b, s| b.call_describe(s))
    }

    /// Guest time so far.
    pub(crate) fn busy(&self) -> Duration {
        self.busy
    }

    /// Log lines the guest wrote, and those dropped past the per-call cap.
    pub(crate) fn log_counts(&self) -> (u64, u64) {
        let log = &self.store.data().log;
        (log.written, log.dropped)
    }

    fn call<R>(
        &mut self,
        clock: Clock,
        deadline: Duration,
        f: impl FnOnce(&Bindings, &mut Store<StoreData>) -> wasmtime::Result<R>,
    ) -> Result<R, Fault> {
        self.timed_call(clock, deadline, f).0
    }

    /// A guest call, and the CPU time it took (wall time without a thread CPU clock).
    fn timed_call<R>(
        &mut self,
        clock: Clock,
        deadline: Duration,
        f: impl FnOnce(&Bindings, &mut Store<StoreData>) -> wasmtime::Result<R>,
    ) -> (Result<R, Fault>, Duration) {
        let data = self.store.data_mut();
        data.clock = clock;
        data.log.lines_this_call = 0;
        data.log.last_error = None;
        begin_call(&mut self.store, &self.engine.inner.watchdog, deadline);
        let started = Instant::now();
        let result = f(&self.bindings, &mut self.store);
        let wall = started.elapsed();
        self.busy += wall;
        let cpu_start = self.store.data().call_cpu_start;
        let took = match (cpu_start, thread_cpu_time()) {
            (Some(start), Some(now)) => now.saturating_sub(start),
            _ => wall,
        };
        self.store.data_mut().watch = None;
        (result.map_err(|e| classify(&self.store, e, deadline)), took)
    }
}

/// Starts the clock on a guest call that may use `deadline` of CPU time: the store
/// stops at the epoch's next advance, which the watchdog makes once that much wall
/// time has passed, and the callback decides.
fn begin_call(store: &mut Store<StoreData>, watchdog: &Watchdog, deadline: Duration) {
    let data = store.data_mut();
    data.call_deadline = deadline;
    data.call_cpu_start = thread_cpu_time();
    data.watch = Some(watchdog.watch(deadline));
    store.set_epoch_deadline(1);
}

/// Names what went wrong in a guest call.
fn classify(store: &Store<StoreData>, error: wasmtime::Error, deadline: Duration) -> Fault {
    let data = store.data();
    if data.limiter.hit {
        return Fault::Memory(data.limiter.cap);
    }
    if error.is::<wasmtime::PoolConcurrencyLimitError>() {
        return Fault::Capacity(format!("{error:#}"));
    }
    let text = format!("{error:#}");
    // wasmtime's error for it is private; its words are the only handle.
    if text.contains("fuel allocated for hostcalls has been exhausted") {
        return Fault::TooMuchOutput(data.hostcall_budget);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Fault::Deadline(deadline),
        // Rust guests abort on panic; the SDK logs the message first.
        Some(Trap::UnreachableCodeReached) => {
            Fault::Panic(data.log.last_error.clone().unwrap_or_default())
        }
        _ => Fault::Trap(text.chars().take(1000).collect()),
    }
}

/// Everything a guest's store holds.
pub(crate) struct StoreData {
    wasi: WasiCtx,
    hostcall_budget: usize,
    table: ResourceTable,
    limiter: MemoryCap,
    clock: Clock,
    rng: SmallRng,
    log: GuestLog,
    /// The running call's deadline, in CPU time of the thread that made it.
    call_deadline: Duration,
    /// That thread's CPU time when the call began; None where there is no such clock.
    call_cpu_start: Option<Duration>,
    /// The watchdog's hold on the running call.
    watch: Option<Watch>,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps linear memory and records that the cap was hit, so the fault can say so.
struct MemoryCap {
    cap: usize,
    hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
            wasmtime::bail!("memory limit of {} bytes reached (wanted {desired})", self.cap);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The guest's log: forwarded to `tracing`, capped per call.
pub(crate) struct GuestLog {
    policy: String,
    lines_this_call: u32,
    max_lines: u32,
    /// Lines written in the current second of worker time, and which second that is.
    lines_this_second: u32,
    second: u64,
    max_lines_per_second: u32,
    max_len: usize,
    pub(crate) dropped: u64,
    pub(crate) written: u64,
    pub(crate) last_error: Option<String>,
}

impl GuestLog {
    fn new(policy: &str, limits: &PolicyLimits) -> Self {
        GuestLog {
            policy: policy.to_string(),
            lines_this_call: 0,
            max_lines: limits.max_log_lines_per_call,
            lines_this_second: 0,
            second: 0,
            max_lines_per_second: limits.max_log_lines_per_second,
            max_len: limits.max_log_line_bytes,
            dropped: 0,
            written: 0,
            last_error: None,
        }
    }

    fn write(&mut self, now: Duration, level: LogLevel, message: &str) {
        let second = now.as_secs();
        if second != self.second {
            self.second = second;
            self.lines_this_second = 0;
        }
        if self.lines_this_call >= self.max_lines
            || self.lines_this_second >= self.max_lines_per_second
        {
            self.dropped += 1;
            return;
        }
        self.lines_this_call += 1;
        self.lines_this_second += 1;
        self.written += 1;
        let message = escape_controls(message, self.max_len);
        let policy = self.policy.as_str();
        match level {
            LogLevel::Error => tracing::error!(target: LOG_TARGET, policy, "{message}"),
            LogLevel::Warn => tracing::warn!(target: LOG_TARGET, policy, "{message}"),
            LogLevel::Info => tracing::info!(target: LOG_TARGET, policy, "{message}"),
            LogLevel::Debug => tracing::debug!(target: LOG_TARGET, policy, "{message}"),
            LogLevel::Trace => tracing::trace!(target: LOG_TARGET, policy, "{message}"),
        }
        if level == LogLevel::Error {
            self.last_error = Some(message);
        }
    }
}

/// At most `max_len` bytes of `message`, with control characters escaped so a policy
/// cannot forge log lines or drive a terminal.
fn escape_controls(message: &str, max_len: usize) -> String {
    let mut out = String::with_capacity(message.len().min(max_len));
    for c in message.chars() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max_len {
            out.truncate(before);
            break;
        }
    }
    out
}

/// The host's imports, whatever the world version (`bindings.rs` links them).
impl StoreData {
    pub(super) fn import_monotonic_ms(&self) -> u64 {
        self.clock.monotonic.as_millis() as u64
    }

    pub(super) fn import_wall_clock_ms(&self) -> u64 {
        self.clock.wall_ms
    }

    pub(super) fn import_random_u64(&mut self) -> u64 {
        self.rng.random()
    }

    pub(super) fn import_log(&mut self, level: LogLevel, message: &str) {
        self.log.write(self.clock.monotonic, level, message);
    }
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn log_lines_cannot_forge_lines_or_drive_terminals() {
        assert_eq!(escape_controls("a\nb\u{1b}[31m", 100), "a\\nb\\u{1b}[31m");
        assert_eq!(escape_controls("héllo wörld", 6), "héllo");
        assert_eq!(escape_controls("ab\ncd", 3), "ab", "an escape is never cut in half");
    }
}
