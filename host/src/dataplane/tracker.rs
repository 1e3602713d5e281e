//! One tracker (or signal server) WebSocket: open it, pass text frames both ways, report
//! when it closes. The texts are the policy's business.

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{DataPlaneLimits, IoEvent};
use crate::policy::wire::{ConnId, Event, TrackerClosed, TrackerText};

#[derive(Debug)]
pub enum Outgoing {
    Text(String),
    /// The policy closed it: close without telling it so.
    Close,
}

/// A running connection: where its outgoing frames go, and its task, which ends once the
/// connection is closed (after everything queued before the close was sent).
#[derive(Debug)]
pub struct Tracker {
    pub outgoing: mpsc::UnboundedSender<Outgoing>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the connection's task.
pub fn spawn(
    conn: ConnId,
    url: String,
    events: mpsc::Sender<IoEvent>,
    limits: &DataPlaneLimits,
) -> Tracker {
    let (outgoing, rx) = mpsc::unbounded_channel();
    let max_text = limits.max_tracker_text;
    let connect_timeout = limits.connect_timeout;
    let task = tokio::spawn(async move {
        let reason = run(conn, &url, rx, &events, max_text, connect_timeout).await;
        if let Some(reason) = reason {
            tracing::debug!(conn = conn.0, url = %super::origin::redact(&url), %reason, "tracker connection closed");
            let _ = events
                .send(IoEvent::Policy(Event::TrackerClosed(TrackerClosed { conn, reason })))
                .await;
        }
    });
    Tracker { outgoing, task }
}

/// Runs until the connection ends; returns why, or `None` if the policy closed it.
async fn run(
    conn: ConnId,
    url: &str,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    events: &mpsc::Sender<IoEvent>,
    max_text: usize,
    connect_timeout: std::time::Duration,
) -> Option<String> {
    let config =
        WebSocketConfig::default().max_message_size(Some(max_text)).max_frame_size(Some(max_text));
    let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let mut socket = match tokio::time::timeout(connect_timeout, connecting).await {
        Err(_) => return Some(format!("no connection within {connect_timeout:?}")),
        Ok(Err(e)) => return Some(format!("could not connect: {e}")),
        Ok(Ok((socket, _))) => socket,
    };
    let _ = events.send(IoEvent::Policy(Event::TrackerConnected(conn))).await;
    loop {
        tokio::select! {
            // What the policy queued goes first: a stopping worker's goodbye must not
            // lose a race with an incoming text nobody will read.
            biased;
            out = outgoing.recv() => match out {
                Some(Outgoing::Text(text)) => {
                    if let Err(e) = socket.send(Message::text(text)).await {
                        break Some(format!("send failed: {e}"));
                    }
                }
                Some(Outgoing::Close) | None => {
                    let _ = socket.close(None).await;
                    break None;
                }
            },
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let event = Event::TrackerText(TrackerText { conn, text: text.as_str().to_owned() });
                    // Waiting here is the back-pressure: a flooding tracker stalls only
                    // its own connection.
                    if events.send(IoEvent::Policy(event)).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Binary(_))) => break Some("sent a binary frame".into()),
                Some(Ok(Message::Close(frame))) => {
                    break Some(frame.map_or_else(String::new, |f| format!("closed: {} {}", f.code, f.reason)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("connection failed: {e}")),
                None => break Some("connection ended".into()),
            },
        }
    }
}
