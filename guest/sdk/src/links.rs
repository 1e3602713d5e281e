//! WebSocket connection upkeep, for trackers and signal relays alike: which URLs to
//! keep a connection to, when to retry one that closed (doubling back-off, from 1 s to
//! a minute), and which connections an earlier instance left open to take over.
//!
//! Pure state machine: no host calls but logging, time-free (the back-off is counted in
//! timer firings the host schedules; the policy names the retry timers with its own
//! keys), so it is tested natively. Its snapshot encoding is the one the default
//! policy's snapshots have always had.

use serde::{Deserialize, Serialize};

use crate::{Command, ConnId, HostState, Ids, Timers, TrackerConnect};

const FIRST_RETRY_MS: u64 = 1_000;
const LAST_RETRY_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum State {
    /// Not asked for yet (a fresh instance's first turn).
    Idle,
    Connecting(ConnId),
    Open(ConnId),
    /// Waiting for the reconnect timer.
    Waiting,
    /// The worker is stopping: never again.
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Link {
    url: String,
    link: State,
    retry_ms: u64,
}

/// The connections to keep, one per URL, in the order given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Links {
    list: Vec<Link>,
}

impl Links {
    pub fn new(urls: &[String]) -> Self {
        let list = urls
            .iter()
            .map(|url| Link { url: url.clone(), link: State::Idle, retry_ms: FIRST_RETRY_MS })
            .collect();
        Links { list }
    }

    /// Takes over from an earlier instance: its links (`saved`, when its snapshot could
    /// be read) where the host still has them, else any connection the host has to the
    /// same tracker; a connection nobody takes is closed. `lost` are reconnect timers
    /// that fired while no instance heard: those trackers connect again at once.
    pub fn resume(
        saved: Option<Links>,
        urls: &[String],
        state: &HostState,
        lost: &[usize],
        out: &mut Vec<Command>,
    ) -> Self {
        let mut trackers = Self::new(urls);
        let saved = saved.filter(|s| s.list.iter().map(|t| &t.url).eq(urls));
        let live = |conn: ConnId| state.trackers.iter().find(|t| t.conn == conn);
        let mut taken: Vec<ConnId> = Vec::new();
        for (index, tracker) in trackers.list.iter_mut().enumerate() {
            let before = saved.as_ref().map(|s| s.list[index].clone());
            if let Some(before) = &before {
                tracker.retry_ms = before.retry_ms;
            }
            let kept = match before.map(|b| b.link) {
                Some(State::Connecting(conn) | State::Open(conn)) => {
                    live(conn).map(|t| (conn, t.open))
                }
                _ => None,
            };
            let adopted = kept.or_else(|| {
                state
                    .trackers
                    .iter()
                    .find(|t| t.url == tracker.url && !taken.contains(&t.conn))
                    .map(|t| (t.conn, t.open))
            });
            tracker.link = match adopted {
                Some((conn, true)) => State::Open(conn),
                Some((conn, false)) => State::Connecting(conn),
                None if saved.is_some() && !lost.contains(&index) => {
                    match &saved.as_ref().map(|s| &s.list[index].link) {
                        Some(State::Waiting) => State::Waiting,
                        Some(State::Stopped) => State::Stopped,
                        _ => State::Idle,
                    }
                }
                None => State::Idle,
            };
            if let Some((conn, _)) = adopted {
                taken.push(conn);
            }
        }
        for extra in state.trackers.iter().filter(|t| !taken.contains(&t.conn)) {
            out.push(Command::TrackerClose(extra.conn));
        }
        trackers
    }

    fn find(&mut self, conn: ConnId) -> Option<(usize, &mut Link)> {
        self.list
            .iter_mut()
            .enumerate()
            .find(|(_, t)| matches!(t.link, State::Connecting(c) | State::Open(c) if c == conn))
    }

    /// Asks for every connection not yet asked for.
    pub fn start(&mut self, ids: &mut Ids, out: &mut Vec<Command>) {
        for tracker in &mut self.list {
            if tracker.link == State::Idle {
                let conn = ids.fresh();
                tracker.link = State::Connecting(conn);
                out.push(Command::TrackerConnect(TrackerConnect {
                    conn,
                    url: tracker.url.clone(),
                }));
            }
        }
    }

    pub fn connected(&mut self, conn: ConnId) {
        if let Some((_, tracker)) = self.find(conn) {
            tracker.link = State::Open(conn);
            tracker.retry_ms = FIRST_RETRY_MS;
        }
    }

    /// A connection closed: its retry timer is set, named `retry(index)` by the policy;
    /// hand [`Links::retry`] that index when it fires.
    pub fn closed<K: Ord + Clone>(
        &mut self,
        conn: ConnId,
        reason: &str,
        (ids, timers): (&mut Ids, &mut Timers<K>),
        retry: impl FnOnce(usize) -> K,
        out: &mut Vec<Command>,
    ) {
        let Some((index, tracker)) = self.find(conn) else {
            return;
        };
        log_closed(&tracker.url, reason, tracker.retry_ms);
        tracker.link = State::Waiting;
        out.push(timers.set(ids, retry(index), tracker.retry_ms));
        tracker.retry_ms = (tracker.retry_ms * 2).min(LAST_RETRY_MS);
    }

    /// The retry timer of connection `index` fired.
    pub fn retry(&mut self, index: usize, ids: &mut Ids, out: &mut Vec<Command>) {
        if let Some(tracker) = self.list.get_mut(index).filter(|t| t.link == State::Waiting) {
            tracker.link = State::Idle;
            self.start(ids, out);
        }
    }

    /// Closes every connection for good (the worker is stopping).
    pub fn stop(&mut self, out: &mut Vec<Command>) {
        for tracker in &mut self.list {
            if let State::Connecting(conn) | State::Open(conn) = tracker.link {
                out.push(Command::TrackerClose(conn));
            }
            tracker.link = State::Stopped;
        }
    }

    /// The URL of an open or opening connection.
    pub fn url(&mut self, conn: ConnId) -> Option<String> {
        self.find(conn).map(|(_, t)| t.url.clone())
    }

    /// The connections that are open now, with their URLs.
    pub fn open_with_urls(&self) -> impl Iterator<Item = (ConnId, &str)> + '_ {
        self.list.iter().filter_map(|t| match t.link {
            State::Open(conn) => Some((conn, t.url.as_str())),
            _ => None,
        })
    }

    /// The connections open or being opened.
    pub fn live(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.list.iter().filter_map(|t| match t.link {
            State::Open(conn) | State::Connecting(conn) => Some(conn),
            _ => None,
        })
    }

    /// The connections that are open now.
    pub fn open(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.open_with_urls().map(|(conn, _)| conn)
    }
}

fn log_closed(url: &str, reason: &str, retry_ms: u64) {
    // Queries may carry tokens.
    let url = url.split(['?', '#']).next().unwrap_or_default();
    crate::host::info(&format!("connection to {url} closed ({reason}); retrying in {retry_ms} ms"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TimerSet, TrackerState};

    /// What a policy keeps beside its links: ids, and timers by its own keys.
    #[derive(Default)]
    struct Context {
        ids: Ids,
        timers: Timers<Timer>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    enum Timer {
        Reconnect(usize),
    }

    impl Context {
        fn both(&mut self) -> (&mut Ids, &mut Timers<Timer>) {
            (&mut self.ids, &mut self.timers)
        }
    }

    fn state(trackers: Vec<(ConnId, String, bool)>) -> HostState {
        let trackers = trackers
            .into_iter()
            .map(|(conn, url, open)| TrackerState { conn, url, open })
            .collect();
        HostState {
            trackers,
            peers: vec![],
            fetches: vec![],
            requests: vec![],
            segments: vec![],
            timers: vec![],
        }
    }

    fn connects(commands: &[Command]) -> Vec<(ConnId, String)> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::TrackerConnect(t) => Some((t.conn, t.url.clone())),
                _ => None,
            })
            .collect()
    }

    fn timer_of(out: &[Command]) -> TimerSet {
        out.iter()
            .find_map(|c| match c {
                Command::TimerSet(t) => Some(*t),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn connects_each_tracker_once_then_backs_off_on_close() {
        let urls = vec!["wss://a.example/".to_string(), "wss://b.example/".to_string()];
        let mut ctx = Context::default();
        let mut trackers = Links::new(&urls);
        let mut out = Vec::new();
        trackers.start(&mut ctx.ids, &mut out);
        let first = connects(&out);
        assert_eq!(first.len(), 2);
        out.clear();
        trackers.start(&mut ctx.ids, &mut out);
        assert!(out.is_empty(), "a tracker being connected is not asked for twice");

        trackers.connected(first[0].0);
        trackers.closed(first[0].0, "gone", ctx.both(), Timer::Reconnect, &mut out);
        trackers.closed(first[0].0, "gone again", ctx.both(), Timer::Reconnect, &mut out);
        assert_eq!(out.len(), 1, "one retry timer, and a repeated close is ignored");
        let retry_timer = timer_of(&out);
        assert_eq!(retry_timer.after_ms, 1_000);
        assert_eq!(ctx.timers.fired(retry_timer.timer), Some(Timer::Reconnect(0)));
        out.clear();
        trackers.retry(0, &mut ctx.ids, &mut out);
        let retry = connects(&out);
        assert_eq!(retry.len(), 1);
        assert_ne!(retry[0].0, first[0].0, "a retry uses a fresh connection id");
        out.clear();
        trackers.closed(retry[0].0, "refused", ctx.both(), Timer::Reconnect, &mut out);
        assert_eq!(timer_of(&out).after_ms, 2_000);
    }

    #[test]
    fn stopping_closes_every_connection_for_good() {
        let urls = vec!["wss://a.example/".to_string(), "wss://b.example/".to_string()];
        let mut ctx = Context::default();
        let mut trackers = Links::new(&urls);
        let mut out = Vec::new();
        trackers.start(&mut ctx.ids, &mut out);
        let conns = connects(&out);
        trackers.connected(conns[0].0);
        out.clear();
        trackers.stop(&mut out);
        assert_eq!(
            out,
            vec![Command::TrackerClose(conns[0].0), Command::TrackerClose(conns[1].0)],
            "open and connecting alike"
        );
        out.clear();
        trackers.closed(conns[0].0, "closed", ctx.both(), Timer::Reconnect, &mut out);
        trackers.retry(0, &mut ctx.ids, &mut out);
        trackers.start(&mut ctx.ids, &mut out);
        assert!(out.is_empty(), "no retry after stopping: {out:?}");
        assert_eq!(trackers.open().count(), 0);
    }

    #[test]
    fn a_new_instance_takes_over_open_connections_and_closes_strays() {
        let urls = vec!["wss://a.example/".to_string(), "wss://b.example/".to_string()];
        let mut ctx = Context::default();
        let mut first = Links::new(&urls);
        let mut out = Vec::new();
        first.start(&mut ctx.ids, &mut out);
        let conns = connects(&out);
        first.connected(conns[0].0);

        // From its snapshot: a's connection kept, b's (still opening) kept; a stray
        // connection to a is closed.
        let host = state(vec![
            (conns[0].0, urls[0].clone(), true),
            (conns[1].0, urls[1].clone(), false),
            (99, urls[0].clone(), true),
        ]);
        let mut out = Vec::new();
        let mut second = Links::resume(Some(first.clone()), &urls, &host, &[], &mut out);
        assert_eq!(out, [Command::TrackerClose(99)]);
        out.clear();
        second.start(&mut ctx.ids, &mut out);
        assert!(out.is_empty(), "nothing reopened: {out:?}");
        assert_eq!(second.open().collect::<Vec<_>>(), [conns[0].0]);

        // Without a snapshot: taken over by URL.
        let mut out = Vec::new();
        let mut third = Links::resume(None, &urls, &host, &[], &mut out);
        assert_eq!(out.len(), 1, "one connection per tracker: {out:?}");
        out.clear();
        third.start(&mut ctx.ids, &mut out);
        assert!(out.is_empty());

        // b's connection went meanwhile, and its reconnect timer fired unheard.
        first.closed(conns[1].0, "gone", ctx.both(), Timer::Reconnect, &mut Vec::new());
        let host = state(vec![(conns[0].0, urls[0].clone(), true)]);
        let mut fourth = Links::resume(Some(first), &urls, &host, &[1], &mut Vec::new());
        let mut out = Vec::new();
        fourth.start(&mut ctx.ids, &mut out);
        assert_eq!(connects(&out).len(), 1, "b reconnects at once");
    }
}
