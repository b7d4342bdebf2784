//! The embedded sink: JSON lines to stdout or a file, written by one thread in batches.
//!
//! An event is durable once its batch is written and flushed (and, with
//! `events.fsync = "per_batch"`, synced to disk); the writer acknowledges every event of a
//! batch together (group commit), so a busy gateway pays one flush per batch rather than
//! per event.
//!
//! The file only ever holds whole lines: a batch that fails part-way (a full disk) is cut
//! off again before anything is acknowledged, and a file that a crash left ending in a torn
//! line is repaired when it is opened, the torn bytes set aside in `<file>.torn`.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;

use futures_util::{future::BoxFuture, FutureExt};
use tokio::sync::{mpsc, oneshot};

use super::config::Fsync;
use super::metrics::SinkMetrics;
use super::{ComponentHealth, Delivery, EventSink, SinkError, WriteFailures};
use crate::event::Event;

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

/// How the embedded sink behaves, from `[events]`.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Events that may wait for the writer.
    pub queue_capacity: usize,
    /// Whether a batch is synced to disk before it is acknowledged (files only).
    pub fsync: Fsync,
    /// How long writes may keep failing before the sink reports itself down.
    pub unready_after: Duration,
}

enum Item {
    Event(Arc<Event>, oneshot::Sender<Result<(), SinkError>>),
    Flush(oneshot::Sender<()>),
}

/// JSON lines to stdout or a file, with a bounded queue in front of the writer.
pub struct EmbeddedSink {
    queue: mpsc::Sender<Item>,
    failures: Arc<Mutex<WriteFailures>>,
}

impl EmbeddedSink {
    /// Opens `output` (repairing a torn last line) and starts the writer thread.
    pub async fn start(
        output: Output,
        options: EmbeddedOptions,
        metrics: SinkMetrics,
    ) -> io::Result<EmbeddedSink> {
        let writer: Option<Box<dyn BatchWriter>> = match &output {
            Output::Stdout => Some(Box::new(io::stdout())),
            Output::File(path) => {
                let path = path.clone();
                let fsync = options.fsync;
                let file = tokio::task::spawn_blocking(move || open_event_file(&path))
                    .await
                    .map_err(io::Error::other)??;
                Some(Box::new(EventFile::new(file, fsync)))
            }
            Output::Discard => None,
        };
        Self::with_writer(writer, options, metrics)
    }

    fn with_writer(
        writer: Option<Box<dyn BatchWriter>>,
        options: EmbeddedOptions,
        metrics: SinkMetrics,
    ) -> io::Result<EmbeddedSink> {
        let (queue, receiver) = mpsc::channel(options.queue_capacity);
        let failures = Arc::new(Mutex::new(WriteFailures::new(options.unready_after)));
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
        tokio::spawn(collect(receiver, disk, failures.clone(), metrics));
        Ok(EmbeddedSink { queue, failures })
    }
}

/// Opens the events file for appending, first cutting off a torn last line (a crash
/// during a write leaves one; the event in it was never acknowledged). The torn bytes are
/// appended to `<file>.torn` so nothing is thrown away unseen.
fn open_event_file(path: &Path) -> io::Result<File> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let length = file.metadata()?.len();
    let whole = whole_lines_length(&mut file, length)?;
    if whole < length {
        let mut torn = Vec::with_capacity((length - whole) as usize);
        file.seek(SeekFrom::Start(whole))?;
        Read::by_ref(&mut file)
            .take(length - whole)
            .read_to_end(&mut torn)?;
        let aside = torn_path(path);
        let mut set_aside = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&aside)?;
        torn.push(b'\n');
        set_aside.write_all(&torn)?;
        set_aside.sync_data()?;
        file.set_len(whole)?;
        tracing::warn!(
            file = %path.display(),
            torn_bytes = length - whole,
            set_aside_in = %aside.display(),
            "the events file ended in a torn line (an interrupted write); moved it aside"
        );
    }
    Ok(file)
}

/// Where the torn tail of `path` is set aside.
fn torn_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".torn");
    PathBuf::from(name)
}

/// The length of the file's longest prefix that ends at a line boundary.
fn whole_lines_length(file: &mut File, length: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = length;
    let mut buffer = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buffer[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(newline) = chunk.iter().rposition(|&byte| byte == b'\n') {
            return Ok(start + newline as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Somewhere a batch of JSON lines is written in one piece.
trait BatchWriter: Send {
    /// Writes `bytes` (whole lines) durably enough to acknowledge them, or fails leaving
    /// the destination as it was before.
    fn write_batch(&mut self, bytes: &[u8]) -> io::Result<()>;
}

impl BatchWriter for io::Stdout {
    fn write_batch(&mut self, bytes: &[u8]) -> io::Result<()> {
        // A pipe cannot be cut back; a reader sees a partial line only if the write
        // itself broke, which also ends the pipe.
        let mut out = self.lock();
        out.write_all(bytes)?;
        out.flush()
    }
}

/// An append that failed after `written` of its bytes reached the file.
struct PartialWrite {
    written: u64,
    error: io::Error,
}

/// What [`EventFile`] needs of a file: appending, cutting back and syncing.
trait AppendOnly: Send {
    fn length(&mut self) -> io::Result<u64>;
    /// Appends all of `bytes`, or says how many reached the file before the error.
    fn append(&mut self, bytes: &[u8]) -> Result<(), PartialWrite>;
    fn cut_back(&mut self, length: u64) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
}

impl AppendOnly for File {
    fn length(&mut self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn append(&mut self, mut bytes: &[u8]) -> Result<(), PartialWrite> {
        let mut written = 0;
        while !bytes.is_empty() {
            match self.write(bytes) {
                Ok(0) => {
                    let error = io::Error::from(io::ErrorKind::WriteZero);
                    return Err(PartialWrite { written, error });
                }
                Ok(n) => {
                    written += n as u64;
                    bytes = &bytes[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(PartialWrite { written, error }),
            }
        }
        Ok(())
    }

    fn cut_back(&mut self, length: u64) -> io::Result<()> {
        self.set_len(length)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// The events file: every batch is whole lines, or nothing.
struct EventFile<F> {
    file: F,
    fsync: Fsync,
    /// Bytes at the end of the file from a failed batch that could not be cut off yet;
    /// they are, before the next append.
    torn_tail: u64,
}

impl<F: AppendOnly> EventFile<F> {
    fn new(file: F, fsync: Fsync) -> Self {
        EventFile {
            file,
            fsync,
            torn_tail: 0,
        }
    }

    /// Cuts the last `bytes` off the file. Its length is read now rather than tracked:
    /// someone else may have cut the file meanwhile (copytruncate log rotation), and
    /// cutting back past its real end would pad it with zeros.
    fn cut_off_tail(&mut self, bytes: u64) -> io::Result<()> {
        let length = self.file.length()?;
        self.file.cut_back(length.saturating_sub(bytes))
    }
}

impl<F: AppendOnly> BatchWriter for EventFile<F> {
    fn write_batch(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.torn_tail > 0 {
            self.cut_off_tail(self.torn_tail)?;
            self.torn_tail = 0;
        }
        // Nothing is read before appending: a batch that fails says how much of it
        // reached the file, and only that is cut off again.
        let written = self.file.append(bytes).and_then(|()| match self.fsync {
            Fsync::Off => Ok(()),
            Fsync::PerBatch => self.file.sync().map_err(|error| PartialWrite {
                written: bytes.len() as u64,
                error,
            }),
        });
        let Err(PartialWrite { written, error }) = written else {
            return Ok(());
        };
        if written > 0 {
            if let Err(e) = self.cut_off_tail(written) {
                tracing::error!(error = %e, "a failed batch could not be cut off the events file; retrying before the next write");
                self.torn_tail = written;
            }
        }
        Err(error)
    }
}

/// A batch for the writer thread, and where to report how its write went.
struct Job {
    events: Vec<Arc<Event>>,
    done: oneshot::Sender<io::Result<()>>,
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
    failures: Arc<Mutex<WriteFailures>>,
    metrics: SinkMetrics,
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
        {
            let mut failures = failures.lock();
            match &outcome {
                Ok(()) => failures.succeeded(),
                Err(e) => {
                    crate::error_limited!(error = %e, "events could not be written");
                    failures.failed(e.to_string(), std::time::Instant::now());
                }
            }
        }
        for item in batch.drain(..) {
            match item {
                Item::Event(event, ack) => {
                    metrics.published(event.event_type, outcome.is_ok());
                    let _ = ack.send(outcome.clone());
                }
                Item::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

fn writer_stopped() -> io::Error {
    io::Error::other("the event writer thread stopped")
}

/// The writer thread: serialises each batch to JSON lines, then writes it in one piece.
fn write_jobs(jobs: std::sync::mpsc::Receiver<Job>, mut writer: Box<dyn BatchWriter>) {
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
        let _ = done.send(writer.write_batch(&buffer));
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
        self.failures.lock().health(std::time::Instant::now())
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
            "n".into(),
        );
        Arc::new(Event::new(
            Event::source_of("n"),
            MESSAGE_RECEIVED,
            "CP-1",
            EventData::Message(data),
        ))
    }

    fn options(unready_after: Duration) -> EmbeddedOptions {
        EmbeddedOptions {
            queue_capacity: 8,
            fsync: Fsync::Off,
            unready_after,
        }
    }

    fn metrics() -> SinkMetrics {
        registered_metrics().1
    }

    fn registered_metrics() -> (crate::metrics::MetricsRegistry, SinkMetrics) {
        let mut registry = crate::metrics::MetricsRegistry::new();
        let metrics = SinkMetrics::register(&mut registry);
        (registry, metrics)
    }

    /// The message ids of the file's lines; panics on a line that is not a whole event.
    fn message_ids(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| {
                let event: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("line {line:?} is not an event: {e}"));
                event["data"]["messageId"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// A real file on which a disk can run full: appends beyond `room` bytes write what
    /// fits, then fail with ENOSPC, as `write(2)` does; cutting back can be made to fail.
    #[derive(Clone)]
    struct FillingDisk {
        file: Arc<Mutex<File>>,
        room: Arc<Mutex<Option<usize>>>,
        cut_back_fails: Arc<Mutex<bool>>,
        syncs: Arc<Mutex<usize>>,
    }

    impl FillingDisk {
        fn create(path: &Path) -> FillingDisk {
            FillingDisk {
                file: Arc::new(Mutex::new(open_event_file(path).unwrap())),
                room: Default::default(),
                cut_back_fails: Default::default(),
                syncs: Default::default(),
            }
        }

        fn set_room(&self, room: Option<usize>) {
            *self.room.lock() = room;
        }
    }

    impl AppendOnly for FillingDisk {
        fn length(&mut self) -> io::Result<u64> {
            self.file.lock().length()
        }

        fn append(&mut self, bytes: &[u8]) -> Result<(), PartialWrite> {
            let mut room = self.room.lock();
            let mut file = self.file.lock();
            match *room {
                Some(left) if left < bytes.len() => {
                    file.append(&bytes[..left])?;
                    *room = Some(0);
                    Err(PartialWrite {
                        written: left as u64,
                        error: io::Error::from(io::ErrorKind::StorageFull),
                    })
                }
                Some(left) => {
                    *room = Some(left - bytes.len());
                    file.append(bytes)
                }
                None => file.append(bytes),
            }
        }

        fn cut_back(&mut self, length: u64) -> io::Result<()> {
            if *self.cut_back_fails.lock() {
                return Err(io::Error::other("cut back refused"));
            }
            self.file.lock().cut_back(length)
        }

        fn sync(&mut self) -> io::Result<()> {
            *self.syncs.lock() += 1;
            self.file.lock().sync()
        }
    }

    /// A sink writing to `events.jsonl` in `dir` through a [`FillingDisk`].
    fn sink_on_filling_disk(
        dir: &tempfile::TempDir,
        fsync: Fsync,
        unready_after: Duration,
    ) -> (PathBuf, FillingDisk, EmbeddedSink) {
        let path = dir.path().join("events.jsonl");
        let disk = FillingDisk::create(&path);
        let sink = EmbeddedSink::with_writer(
            Some(Box::new(EventFile::new(disk.clone(), fsync))),
            options(unready_after),
            metrics(),
        )
        .unwrap();
        (path, disk, sink)
    }

    async fn write(sink: &EmbeddedSink, id: &str) -> Result<(), SinkError> {
        sink.submit(event(id)).await?.await
    }

    #[tokio::test]
    async fn writes_json_lines_and_acknowledges_after_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (registry, metrics) = registered_metrics();
        let sink = EmbeddedSink::start(
            Output::File(path.clone()),
            options(Duration::from_secs(5)),
            metrics.clone(),
        )
        .await
        .unwrap();
        let mut deliveries = Vec::new();
        for i in 0..20 {
            deliveries.push(sink.submit(event(&i.to_string())).await.unwrap());
        }
        for delivery in deliveries {
            delivery.await.unwrap();
        }
        let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(message_ids(&path), expected);
        assert_eq!(sink.health().status, "up");
        let durable = registry.encode();
        assert!(
            durable.contains(
                r#"ocppgw_events_published_total{event_type="message_received",outcome="ok"} 20"#
            ),
            "{durable}"
        );
    }

    #[tokio::test]
    async fn a_batch_that_fills_the_disk_is_cut_off_before_the_next_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (path, disk, sink) = sink_on_filling_disk(&dir, Fsync::Off, Duration::from_secs(3600));
        write(&sink, "before").await.unwrap();
        // Room for half an event: the write tears a line, and must be refused.
        disk.set_room(Some(40));
        assert!(write(&sink, "refused").await.is_err());
        assert_eq!(sink.health().status, "degraded");
        // Space freed: the next event is acknowledged, and must be a whole line.
        disk.set_room(None);
        write(&sink, "after").await.unwrap();
        assert_eq!(sink.health().status, "up");
        assert_eq!(message_ids(&path), ["before", "after"]);
    }

    #[tokio::test]
    async fn a_failed_cut_back_is_retried_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let (path, disk, sink) = sink_on_filling_disk(&dir, Fsync::Off, Duration::from_secs(3600));
        write(&sink, "before").await.unwrap();
        disk.set_room(Some(10));
        *disk.cut_back_fails.lock() = true;
        assert!(write(&sink, "torn").await.is_err());
        disk.set_room(None);
        // Still cannot cut back: nothing may be appended after the torn line.
        assert!(write(&sink, "refused").await.is_err());
        *disk.cut_back_fails.lock() = false;
        write(&sink, "after").await.unwrap();
        assert_eq!(message_ids(&path), ["before", "after"]);
    }

    #[tokio::test]
    async fn per_batch_fsync_syncs_before_acknowledging() {
        let dir = tempfile::tempdir().unwrap();
        let (_, disk, sink) = sink_on_filling_disk(&dir, Fsync::PerBatch, Duration::from_secs(5));
        write(&sink, "1").await.unwrap();
        assert_eq!(*disk.syncs.lock(), 1);
        write(&sink, "2").await.unwrap();
        assert_eq!(*disk.syncs.lock(), 2);
    }

    #[tokio::test]
    async fn persistent_write_failures_take_the_sink_down_until_a_write_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let (_, disk, sink) = sink_on_filling_disk(&dir, Fsync::Off, Duration::ZERO);
        disk.set_room(Some(0));
        assert!(write(&sink, "refused").await.is_err());
        let health = sink.health();
        assert_eq!(health.status, "down");
        assert!(health.detail.unwrap().contains("every write failed"));
        disk.set_room(None);
        write(&sink, "accepted").await.unwrap();
        assert_eq!(sink.health().status, "up");
    }

    #[tokio::test]
    async fn a_torn_last_line_is_set_aside_when_the_file_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let whole = serde_json::to_string(event("whole").as_ref()).unwrap();
        std::fs::write(
            &path,
            format!("{whole}\n{{\"specversion\":\"1.0\",\"id\":\"tor"),
        )
        .unwrap();
        let sink = EmbeddedSink::start(
            Output::File(path.clone()),
            options(Duration::from_secs(5)),
            metrics(),
        )
        .await
        .unwrap();
        write(&sink, "new").await.unwrap();
        assert_eq!(message_ids(&path), ["whole", "new"]);
        assert_eq!(
            std::fs::read_to_string(torn_path(&path)).unwrap(),
            "{\"specversion\":\"1.0\",\"id\":\"tor\n"
        );
    }

    #[test]
    fn a_file_without_any_newline_is_all_torn_and_a_whole_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        // Longer than one read chunk, so the backwards scan crosses chunks.
        let torn = "x".repeat(200 * 1024);
        std::fs::write(&path, &torn).unwrap();
        drop(open_event_file(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(
            std::fs::read_to_string(torn_path(&path)).unwrap(),
            format!("{torn}\n")
        );
        let whole = format!("{}\n", "y".repeat(100 * 1024));
        std::fs::write(&path, &whole).unwrap();
        drop(open_event_file(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);
    }

    #[tokio::test]
    async fn submit_waits_when_the_queue_is_full() {
        let (queue, mut receiver) = mpsc::channel(1);
        let sink = EmbeddedSink {
            queue,
            failures: Arc::new(Mutex::new(WriteFailures::new(Duration::from_secs(5)))),
        };
        let _first = sink.submit(event("1")).await.unwrap();
        let second = sink.submit(event("2"));
        tokio::pin!(second);
        assert!(futures_util::poll!(second.as_mut()).is_pending());
        receiver.recv().await.unwrap();
        assert!(second.await.is_ok());
    }
}
