//! The embedded sink: JSON lines to stdout or a file, written by one thread in batches.
//!
//! An event is durable once its batch is written and flushed; the writer acknowledges
//! every event of a batch together (group commit), so a busy gateway pays one flush per
//! batch rather than per event.

use std::{io::Write, path::PathBuf, sync::Arc, sync::Mutex};

use futures_util::{future::BoxFuture, FutureExt};
use tokio::sync::{mpsc, oneshot};

use super::{ComponentHealth, Delivery, EventSink, SinkError};
use crate::{event::Event, metrics::Metrics};

/// Most events written per batch.
const MAX_BATCH: usize = 256;

/// Where the embedded sink writes.
#[derive(Debug, Clone)]
pub enum Output {
    /// Standard output.
    Stdout,
    /// A file, appended to (created if missing).
    File(PathBuf),
    /// Nowhere (events are only acknowledged).
    Discard,
}

enum Item {
    Event(Arc<Event>, oneshot::Sender<Result<(), SinkError>>),
    Flush(oneshot::Sender<()>),
}

/// JSON lines to stdout or a file, with a bounded queue in front of the writer.
pub struct EmbeddedSink {
    queue: mpsc::Sender<Item>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl EmbeddedSink {
    /// Opens `output` and starts the writer thread; at most `queue_capacity` events wait.
    pub async fn start(
        output: Output,
        queue_capacity: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<EmbeddedSink> {
        let writer: Option<Box<dyn Write + Send>> = match &output {
            Output::Stdout => Some(Box::new(std::io::stdout())),
            Output::File(path) => {
                let path = path.clone();
                let file = tokio::task::spawn_blocking(move || {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                })
                .await
                .map_err(std::io::Error::other)??;
                Some(Box::new(file))
            }
            Output::Discard => None,
        };
        let (queue, receiver) = mpsc::channel(queue_capacity);
        let last_error = Arc::new(Mutex::new(None));
        let disk = match writer {
            // Writes block, and a slow disk or a full stdout pipe must not stall the
            // runtime's workers: a thread of its own writes, and serialises too.
            Some(writer) => {
                let (jobs, job_receiver) = std::sync::mpsc::channel::<Job>();
                std::thread::Builder::new()
                    .name("event-writer".into())
                    .spawn(move || write_jobs(job_receiver, writer))?;
                Some(jobs)
            }
            None => None,
        };
        tokio::spawn(collect(receiver, disk, last_error.clone(), metrics));
        Ok(EmbeddedSink { queue, last_error })
    }
}

/// A batch for the writer thread, and where to report how its write went.
struct Job {
    events: Vec<Arc<Event>>,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// Gathers events into batches on the runtime and hands each to the writer thread.
///
/// Batching here rather than in the thread is what makes the batches large: this task runs
/// after the sessions that were ready before it, so a batch holds every event they
/// produced, and while one batch is being written the next one grows. The thread is woken
/// once per batch, not once per event, and the acknowledgements are sent from here, which
/// wakes the sessions without crossing threads.
async fn collect(
    mut receiver: mpsc::Receiver<Item>,
    disk: Option<std::sync::mpsc::Sender<Job>>,
    last_error: Arc<Mutex<Option<String>>>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let events: Vec<Arc<Event>> = batch
            .iter()
            .filter_map(|item| match item {
                Item::Event(event, _) => Some(event.clone()),
                Item::Flush(_) => None,
            })
            .collect();
        let result = match &disk {
            Some(jobs) if !events.is_empty() => {
                let (done, written) = oneshot::channel();
                match jobs.send(Job { events, done }) {
                    Ok(()) => written.await.unwrap_or_else(|_| Err(writer_stopped())),
                    Err(_) => Err(writer_stopped()),
                }
            }
            _ => Ok(()),
        };
        let outcome = result.map_err(|e| SinkError::Unavailable(e.to_string()));
        match &outcome {
            Ok(()) => *last_error.lock().unwrap_or_else(|e| e.into_inner()) = None,
            Err(e) => {
                tracing::error!(error = %e, "events could not be written");
                *last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            }
        }
        for item in batch.drain(..) {
            match item {
                Item::Event(event, ack) => {
                    metrics.event_published(event.event_type, outcome.is_ok());
                    let _ = ack.send(outcome.clone());
                }
                Item::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

fn writer_stopped() -> std::io::Error {
    std::io::Error::other("the event writer thread stopped")
}

/// The writer thread: serialises each batch to JSON lines, then writes and flushes it.
fn write_jobs(jobs: std::sync::mpsc::Receiver<Job>, mut writer: Box<dyn Write + Send>) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    while let Ok(Job { events, done }) = jobs.recv() {
        buffer.clear();
        for event in &events {
            // Serialising our own types cannot fail; a failure would be a bug, and must
            // still not lose the line silently.
            if let Err(e) = serde_json::to_writer(&mut buffer, event.as_ref()) {
                tracing::error!(error = %e, "event could not be serialised");
            }
            buffer.push(b'\n');
        }
        let _ = done.send(writer.write_all(&buffer).and_then(|()| writer.flush()));
    }
}

impl EventSink for EmbeddedSink {
    fn submit(&self, event: Arc<Event>) -> BoxFuture<'_, Result<Delivery, SinkError>> {
        async move {
            let (ack, delivery) = oneshot::channel();
            self.queue
                .send(Item::Event(event, ack))
                .await
                .map_err(|_| SinkError::Closed)?;
            Ok(Delivery::new(delivery))
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        async move {
            let (done, flushed) = oneshot::channel();
            if self.queue.send(Item::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
        }
        .boxed()
    }

    fn health(&self) -> ComponentHealth {
        match self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            None => ComponentHealth {
                status: "up",
                detail: None,
            },
            Some(error) => ComponentHealth {
                status: "degraded",
                detail: Some(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventData, MessageData, MESSAGE_RECEIVED};
    use ocpp::{MessageType, OcppVersion};

    fn event(id: &str) -> Arc<Event> {
        let data = MessageData::new(
            OcppVersion::V201,
            MessageType::Call,
            id,
            Some("Heartbeat".into()),
            "c",
            "n",
        );
        Arc::new(Event::new(
            "n",
            MESSAGE_RECEIVED,
            "CP-1",
            EventData::Message(data),
        ))
    }

    #[tokio::test]
    async fn writes_json_lines_and_acknowledges_after_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let metrics = Metrics::new(&ocpp::OcppVersion::ALL, None);
        let sink = EmbeddedSink::start(Output::File(path.clone()), 8, metrics.clone())
            .await
            .unwrap();
        let mut deliveries = Vec::new();
        for i in 0..20 {
            deliveries.push(sink.submit(event(&i.to_string())).await.unwrap());
        }
        for delivery in deliveries {
            delivery.await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 20);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line["specversion"], "1.0");
            assert_eq!(line["data"]["messageId"], i.to_string());
        }
        assert_eq!(sink.health().status, "up");
        let durable = metrics.encode();
        assert!(
            durable.contains(
                r#"ocppgw_events_published_total{event_type="message_received",outcome="ok"} 20"#
            ),
            "{durable}"
        );
    }

    #[tokio::test]
    async fn submit_waits_when_the_queue_is_full() {
        let (queue, mut receiver) = mpsc::channel(1);
        let sink = EmbeddedSink {
            queue,
            last_error: Default::default(),
        };
        let _first = sink.submit(event("1")).await.unwrap();
        let second = sink.submit(event("2"));
        tokio::pin!(second);
        assert!(futures_util::poll!(second.as_mut()).is_pending());
        receiver.recv().await.unwrap();
        assert!(second.await.is_ok());
    }
}
