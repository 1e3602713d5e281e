//! The watchdog that stops guest calls which run past their deadline.
//!
//! It owns one thread per engine and the engine's epoch: each call in progress is
//! registered with the wall-clock time its deadline falls due, the thread sleeps until
//! the earliest of them and then advances the epoch, and the call's epoch callback,
//! which counts CPU time of the calling thread, either stops the guest or hands back
//! the time it still has. So the thread wakes about twice per call, never while no
//! guest runs, and not at all for calls that end long before their deadline while
//! others are running. It must never advance the epoch on a timer: a ticking thread
//! cost a worker serving 25 viewers a fifth of its CPU.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// How soon a call whose deadline fell due is looked at again, if its callback has not
/// set a new one by then (it runs at the guest's next epoch check, well within this).
const RECHECK: Duration = Duration::from_millis(1);
/// The longest the thread sleeps, so it ends soon after its engine does.
const LONGEST_SLEEP: Duration = Duration::from_secs(1);

/// A handle on the engine's watchdog thread; clones share it.
#[derive(Clone)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Thread,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When each call in progress falls due, by call.
    due: HashMap<u64, Instant>,
    next_call: u64,
    /// When the thread will look next; None while it sleeps with nothing to time.
    wakes_at: Option<Instant>,
}

/// A call being watched, from its start until this drops.
pub(crate) struct Watch {
    shared: Arc<Shared>,
    call: u64,
}

impl Watchdog {
    /// Starts the thread for `engine`; it ends soon after the engine is dropped.
    pub(crate) fn start(engine: &Engine) -> Watchdog {
        let weak = engine.weak();
        let shared = Arc::new(Shared::default());
        let watching = shared.clone();
        let handle = std::thread::Builder::new()
            .name("policy-watchdog".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    let sleep = watching.next_sleep(Instant::now(), || engine.increment_epoch());
                    drop(engine);
                    std::thread::park_timeout(sleep.min(LONGEST_SLEEP));
                }
            })
            .expect("could not start the policy watchdog thread");
        Watchdog { shared, thread: handle.thread().clone() }
    }

    /// Watches a call that may run for `deadline` (of CPU time) from now. The engine's
    /// epoch advances once that much wall time has passed, and again after whatever
    /// the call's callback says is left, until the guard drops.
    pub(crate) fn watch(&self, deadline: Duration) -> Watch {
        let (call, wake) = self.shared.register(Instant::now() + deadline);
        if wake {
            self.thread.unpark();
        }
        Watch { shared: self.shared.clone(), call }
    }

    /// Whether the thread sleeps for want of calls to watch (for tests).
    pub(crate) fn idle(&self) -> bool {
        let state = self.shared.lock();
        state.wakes_at.is_none() && state.due.is_empty()
    }
}

impl Watch {
    /// The call still has `left` of its deadline (its callback found the thread had
    /// been preempted): the epoch advances again when that much wall time has passed.
    /// The thread is not woken: it looks again within [`RECHECK`] of the last due time.
    pub(crate) fn extend(&self, left: Duration) {
        let mut state = self.shared.lock();
        if let Some(due) = state.due.get_mut(&self.call) {
            *due = Instant::now() + left;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.lock().due.remove(&self.call);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a call that falls due at `due`; true if the thread must be woken to see it
    /// in time (it sleeps with nothing to time, or until later than that).
    fn register(&self, due: Instant) -> (u64, bool) {
        let mut state = self.lock();
        let call = state.next_call;
        state.next_call += 1;
        state.due.insert(call, due);
        (call, state.wakes_at.is_none_or(|at| at > due))
    }

    /// One look at the calls in progress at `now`: advances the epoch (through
    /// `advance`) if any fell due, and says how long to sleep (with nothing to time,
    /// the longest: a call wakes it sooner).
    fn next_sleep(&self, now: Instant, advance: impl FnOnce()) -> Duration {
        let mut state = self.lock();
        let Some(earliest) = state.due.values().min().copied() else {
            state.wakes_at = None;
            return LONGEST_SLEEP;
        };
        if earliest > now {
            state.wakes_at = Some(earliest);
            return earliest - now;
        }
        // Their callbacks will say what is left; until they do, look again soon.
        for due in state.due.values_mut().filter(|due| **due <= now) {
            *due = now + RECHECK;
        }
        state.wakes_at = Some(now + RECHECK);
        drop(state);
        advance();
        Duration::ZERO
    }
}

/// How much of `deadline` a call that began at thread CPU time `start` has left at
/// `now`; None when it has run out, or without a thread CPU clock (the wall-clock
/// deadline then stands).
pub(crate) fn cpu_time_left(
    deadline: Duration,
    start: Option<Duration>,
    now: Option<Duration>,
) -> Option<Duration> {
    let used = now?.checked_sub(start?)?;
    deadline.checked_sub(used).filter(|left| !left.is_zero())
}

/// CPU time the calling thread has used so far.
pub(crate) fn thread_cpu_time() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok().map(Duration::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_with(due: &[(u64, Instant)]) -> Shared {
        let shared = Shared::default();
        shared.lock().due.extend(due.iter().copied());
        shared
    }

    #[test]
    fn with_nothing_to_watch_the_thread_sleeps_until_woken() {
        let shared = Shared::default();
        let mut advanced = false;
        assert_eq!(shared.next_sleep(Instant::now(), || advanced = true), LONGEST_SLEEP);
        assert!(!advanced);
        let state = shared.lock();
        assert!(state.wakes_at.is_none());
    }

    #[test]
    fn the_thread_sleeps_until_the_earliest_deadline_then_advances_the_epoch_once() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let shared = shared_with(&[(1, now + ms(5)), (2, now + ms(100))]);
        let mut advanced = 0;
        assert_eq!(shared.next_sleep(now, || advanced += 1), ms(5));
        assert_eq!(advanced, 0);
        assert_eq!(shared.lock().wakes_at, Some(now + ms(5)));

        let later = now + ms(6);
        assert_eq!(shared.next_sleep(later, || advanced += 1), Duration::ZERO);
        assert_eq!(advanced, 1);
        // Until its callback says what is left, the call is looked at again soon; the
        // other keeps its deadline.
        let state = shared.lock();
        assert_eq!(state.due[&1], later + RECHECK);
        assert_eq!(state.due[&2], now + ms(100));
    }

    #[test]
    fn a_call_wakes_the_thread_only_when_it_would_look_too_late() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let shared = Shared::default();
        assert_eq!(shared.register(now + ms(100)), (0, true), "the thread sleeps until woken");
        assert_eq!(shared.next_sleep(now, || {}), ms(100));
        assert_eq!(shared.register(now + ms(200)), (1, false), "seen in time");
        assert_eq!(shared.register(now + ms(5)), (2, true), "the thread would look too late");
        assert_eq!(shared.next_sleep(now, || {}), ms(5));
    }

    #[test]
    fn a_call_is_watched_until_its_guard_drops() {
        let engine = Engine::default();
        let watchdog = Watchdog::start(&engine);
        let watch = watchdog.watch(Duration::from_secs(30));
        let due = watchdog.shared.lock().due[&watch.call];
        watch.extend(Duration::from_secs(60));
        assert!(watchdog.shared.lock().due[&watch.call] > due);
        drop(watch);
        assert!(watchdog.shared.lock().due.is_empty());
    }

    #[test]
    fn the_deadline_counts_cpu_time_not_time_spent_waiting() {
        let ms = Duration::from_millis;
        // 5 ms of wall time passed but the thread ran for 1 ms: 4 ms are left.
        assert_eq!(cpu_time_left(ms(5), Some(ms(100)), Some(ms(101))), Some(ms(4)));
        assert_eq!(cpu_time_left(ms(5), Some(ms(100)), Some(ms(105))), None);
        assert_eq!(cpu_time_left(ms(5), Some(ms(100)), Some(ms(200))), None);
        assert_eq!(cpu_time_left(ms(5), None, Some(ms(1))), None, "no clock: wall time rules");
        assert_eq!(cpu_time_left(ms(5), Some(ms(1)), None), None);
    }

    #[test]
    fn the_thread_cpu_clock_advances_with_work_and_not_with_sleep() {
        let start = thread_cpu_time().expect("Linux has a thread CPU clock");
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu_time().unwrap() - start;
        assert!(slept < Duration::from_millis(20), "sleeping used {slept:?} of CPU");
        let mut x = 0u64;
        let begun = thread_cpu_time().unwrap();
        while thread_cpu_time().unwrap() - begun < Duration::from_millis(5) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(x > 0);
    }
}
