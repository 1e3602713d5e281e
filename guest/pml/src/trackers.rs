//! Tracker connection upkeep: which trackers to connect to, when to retry.
//!
//! Pure state machine: no host calls but logging, time-free (the back-off is counted in
//! timer firings the host schedules), so it is tested natively.

#[cfg(test)]
use superpeer_guest::TrackerState;
use superpeer_guest::{Command, ConnId, HostState, TimerId, TimerSet, TrackerConnect};

const FIRST_RETRY_MS: u64 = 1_000;
const LAST_RETRY_MS: u64 = 60_000;
/// Timer ids at and above this name a tracker's reconnect timer (base + index).
const RECONNECT_TIMER_BASE: TimerId = 1 << 32;
/// Connection ids are the tracker's index plus a generation in the high bits, so a late
/// event from a connection we have given up on is never mistaken for the new one.
const GENERATION_SHIFT: u32 = 16;

#[derive(Debug, Clone, PartialEq)]
enum Link {
    /// Not asked for yet (a fresh instance's first turn).
    Idle,
    Connecting(ConnId),
    Open(ConnId),
    /// Waiting for the reconnect timer.
    Waiting,
    /// The worker is stopping: never again.
    Stopped,
}

#[derive(Debug)]
struct Tracker {
    url: String,
    link: Link,
    generation: u64,
    retry_ms: u64,
}

#[derive(Debug)]
pub(crate) struct Trackers {
    list: Vec<Tracker>,
}

impl Trackers {
    /// `prior` is a snapshot of an earlier instance: one generation per tracker, so new
    /// connection ids never collide with ones the host may still report.
    pub(crate) fn new(urls: &[String], state: &HostState, prior: &[u8]) -> Result<Self, String> {
        if urls.len() >= 1 << GENERATION_SHIFT {
            return Err(format!("{} trackers is more than this policy can track", urls.len()));
        }
        let generations: Vec<u64> = prior
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let list = urls
            .iter()
            .enumerate()
            .map(|(index, url)| {
                let live = state
                    .trackers
                    .iter()
                    .find(|t| &t.url == url && Self::index_of(t.conn) == index);
                let link = match live {
                    Some(t) if t.open => Link::Open(t.conn),
                    Some(t) => Link::Connecting(t.conn),
                    None => Link::Idle,
                };
                Tracker {
                    url: url.clone(),
                    link,
                    generation: generations.get(index).copied().unwrap_or(0),
                    retry_ms: FIRST_RETRY_MS,
                }
            })
            .collect();
        Ok(Trackers { list })
    }

    fn index_of(conn: ConnId) -> usize {
        (conn & ((1 << GENERATION_SHIFT) - 1)) as usize
    }

    fn find(&mut self, conn: ConnId) -> Option<&mut Tracker> {
        self.list
            .get_mut(Self::index_of(conn))
            .filter(|t| matches!(t.link, Link::Connecting(c) | Link::Open(c) if c == conn))
    }

    /// Asks for every tracker not yet asked for.
    pub(crate) fn start(&mut self, commands: &mut Vec<Command>) {
        for index in 0..self.list.len() {
            if self.list[index].link == Link::Idle {
                self.connect(index, commands);
            }
        }
    }

    fn connect(&mut self, index: usize, commands: &mut Vec<Command>) {
        let tracker = &mut self.list[index];
        tracker.generation += 1;
        let conn = (tracker.generation << GENERATION_SHIFT) | index as u64;
        tracker.link = Link::Connecting(conn);
        commands.push(Command::TrackerConnect(TrackerConnect { conn, url: tracker.url.clone() }));
    }

    pub(crate) fn connected(&mut self, conn: ConnId) {
        if let Some(tracker) = self.find(conn) {
            tracker.link = Link::Open(conn);
            tracker.retry_ms = FIRST_RETRY_MS;
        }
    }

    pub(crate) fn closed(&mut self, conn: ConnId, reason: &str, commands: &mut Vec<Command>) {
        let index = Self::index_of(conn);
        let Some(tracker) = self.find(conn) else {
            return;
        };
        log_closed(&tracker.url, reason, tracker.retry_ms);
        tracker.link = Link::Waiting;
        commands.push(Command::TimerSet(TimerSet {
            timer: RECONNECT_TIMER_BASE + index as u64,
            after_ms: tracker.retry_ms,
        }));
        tracker.retry_ms = (tracker.retry_ms * 2).min(LAST_RETRY_MS);
    }

    pub(crate) fn timer(&mut self, timer: TimerId, commands: &mut Vec<Command>) {
        // Only this module's timers: others' (the seeder's are above these) must not be
        // read as a tracker index, which `as usize` would do in 32-bit wasm.
        let Some(index) = timer
            .checked_sub(RECONNECT_TIMER_BASE)
            .filter(|i| *i < 1 << GENERATION_SHIFT)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        if self.list.get(index).is_some_and(|t| t.link == Link::Waiting) {
            self.connect(index, commands);
        }
    }

    /// Closes every connection for good (the worker is stopping).
    pub(crate) fn stop(&mut self, commands: &mut Vec<Command>) {
        for tracker in &mut self.list {
            if let Link::Connecting(conn) | Link::Open(conn) = tracker.link {
                commands.push(Command::TrackerClose(conn));
            }
            tracker.link = Link::Stopped;
        }
    }

    /// The URL of an open or opening connection.
    pub(crate) fn url(&mut self, conn: ConnId) -> Option<String> {
        self.find(conn).map(|t| t.url.clone())
    }

    /// The connections that are open now, with their URLs.
    pub(crate) fn open_with_urls(&self) -> impl Iterator<Item = (ConnId, &str)> + '_ {
        self.list.iter().filter_map(|t| match t.link {
            Link::Open(conn) => Some((conn, t.url.as_str())),
            _ => None,
        })
    }

    /// The connections that are open now.
    pub(crate) fn open(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.list.iter().filter_map(|t| match t.link {
            Link::Open(conn) => Some(conn),
            _ => None,
        })
    }

    pub(crate) fn snapshot(&self) -> Vec<u8> {
        self.list.iter().flat_map(|t| t.generation.to_le_bytes()).collect()
    }
}

#[cfg(target_family = "wasm")]
fn log_closed(url: &str, reason: &str, retry_ms: u64) {
    superpeer_guest::host::info(&format!(
        "tracker {url} closed ({reason}); retrying in {retry_ms} ms"
    ));
}

// Native unit tests have no host to log to.
#[cfg(not(target_family = "wasm"))]
fn log_closed(_: &str, _: &str, _: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(trackers: Vec<(ConnId, String)>) -> HostState {
        let trackers = trackers
            .into_iter()
            .map(|(conn, url)| TrackerState { conn, url, open: true })
            .collect();
        HostState { trackers, peers: vec![], fetches: vec![], segments: vec![], timers: vec![] }
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

    #[test]
    fn connects_each_tracker_once_then_backs_off_on_close() {
        let urls = vec!["wss://a.example/".to_string(), "wss://b.example/".to_string()];
        let mut trackers = Trackers::new(&urls, &state(vec![]), &[]).unwrap();
        let mut out = Vec::new();
        trackers.start(&mut out);
        let first = connects(&out);
        assert_eq!(first.len(), 2);
        out.clear();
        trackers.start(&mut out);
        assert!(out.is_empty(), "a tracker being connected is not asked for twice");

        trackers.connected(first[0].0);
        trackers.closed(first[0].0, "gone", &mut out);
        trackers.closed(first[0].0, "gone again", &mut out);
        assert_eq!(
            out,
            vec![Command::TimerSet(TimerSet { timer: RECONNECT_TIMER_BASE, after_ms: 1_000 })],
            "one retry timer, and a repeated close is ignored"
        );
        out.clear();
        trackers.timer(RECONNECT_TIMER_BASE, &mut out);
        let retry = connects(&out);
        assert_eq!(retry.len(), 1);
        assert_ne!(retry[0].0, first[0].0, "a retry uses a fresh connection id");
        out.clear();
        trackers.closed(retry[0].0, "refused", &mut out);
        assert_eq!(
            out,
            vec![Command::TimerSet(TimerSet { timer: RECONNECT_TIMER_BASE, after_ms: 2_000 })]
        );
    }

    #[test]
    fn stopping_closes_every_connection_for_good() {
        let urls = vec!["wss://a.example/".to_string(), "wss://b.example/".to_string()];
        let mut trackers = Trackers::new(&urls, &state(vec![]), &[]).unwrap();
        let mut out = Vec::new();
        trackers.start(&mut out);
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
        trackers.closed(conns[0].0, "closed", &mut out);
        trackers.timer(RECONNECT_TIMER_BASE, &mut out);
        trackers.start(&mut out);
        assert!(out.is_empty(), "no retry after stopping: {out:?}");
        assert_eq!(trackers.open().count(), 0);
    }

    #[test]
    fn adopts_open_connections_and_keeps_generations_across_instances() {
        let urls = vec!["wss://a.example/".to_string()];
        let mut first = Trackers::new(&urls, &state(vec![]), &[]).unwrap();
        let mut out = Vec::new();
        first.start(&mut out);
        let (conn, url) = connects(&out).remove(0);
        first.connected(conn);

        let mut second =
            Trackers::new(&urls, &state(vec![(conn, url)]), &first.snapshot()).unwrap();
        out.clear();
        second.start(&mut out);
        assert!(out.is_empty(), "an open connection is adopted, not reopened");
        second.closed(conn, "", &mut out);
        out.clear();
        second.timer(RECONNECT_TIMER_BASE, &mut out);
        assert_ne!(connects(&out)[0].0, conn);
    }
}
