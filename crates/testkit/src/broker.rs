//! A real Kafka-protocol broker process (tansu, in-memory storage) for tests, with a
//! test-side producer and reader built on the same rdkafka the gateway uses.

use std::{
    collections::HashMap,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use rdkafka::{
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer},
    message::{Headers, Message},
    producer::{FutureProducer, FutureRecord},
    Offset, TopicPartitionList,
};
use serde_json::Value;

/// A running broker, killed on drop.
pub struct Broker {
    /// `host:port` of the broker.
    pub address: String,
    child: Child,
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The key.
    pub key: Option<String>,
    /// The headers.
    pub headers: HashMap<String, String>,
    /// The value, parsed as JSON.
    pub value: Value,
}

fn tansu_binary() -> String {
    std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".to_owned())
}

fn spawn_tansu(port: u16) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    Command::new(tansu_binary())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start `{}` (run scripts/test.sh, which installs it): {e}",
                tansu_binary()
            )
        })
}

impl Broker {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    /// Fails (never skips) when tansu is missing: `scripts/test.sh` installs it.
    pub async fn start() -> Broker {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let broker = Broker {
            address: format!("127.0.0.1:{port}"),
            child: spawn_tansu(port),
        };
        broker.wait_listening().await;
        broker
    }

    /// Kills the broker (SIGKILL) and starts a new one on the same port: in-memory
    /// storage, so it comes back empty, without topics, groups or producer ids.
    pub async fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.address.rsplit(':').next().unwrap().parse().unwrap();
        self.child = spawn_tansu(port);
        self.wait_listening().await;
    }

    async fn wait_listening(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&self.address).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "broker did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Freezes the broker process (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// Resumes a paused broker (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }

    /// A producer for this broker.
    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .set("message.timeout.ms", "10000")
            .create()
            .unwrap()
    }

    /// Produces one JSON record and waits for its acknowledgement.
    pub async fn produce(&self, producer: &FutureProducer, topic: &str, key: &str, value: &str) {
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(value),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("test record produced");
    }

    /// Produces one record with headers and waits for its acknowledgement.
    pub async fn produce_with_headers(
        &self,
        producer: &FutureProducer,
        topic: &str,
        key: &str,
        value: &str,
        headers: &[(&str, &str)],
    ) {
        let mut owned = rdkafka::message::OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(rdkafka::message::Header {
                key: name,
                value: Some(*value),
            });
        }
        producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(value)
                    .headers(owned),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("test record produced");
    }

    /// Reads `topic` from the beginning until `done` holds for everything read so far.
    pub async fn read_until(&self, topic: &str, done: impl Fn(&[Record]) -> bool) -> Vec<Record> {
        self.read_until_within(topic, Duration::from_secs(30), done)
            .await
    }

    /// [`Broker::read_until`], waiting at most `within`.
    pub async fn read_until_within(
        &self,
        topic: &str,
        within: Duration,
        done: impl Fn(&[Record]) -> bool,
    ) -> Vec<Record> {
        let address = self.address.clone();
        let topic = topic.to_owned();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &address)
                .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .unwrap();
            let partitions = metadata.topics()[0].partitions().len() as i32;
            assert!(partitions > 0, "topic {topic} has no partitions");
            let mut assignment = TopicPartitionList::new();
            for p in 0..partitions {
                assignment
                    .add_partition_offset(&topic, p, Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&assignment).unwrap();
            while stop_rx.try_recv().is_err() {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                    let headers = message
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let record = Record {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message
                            .key()
                            .map(|k| String::from_utf8_lossy(k).into_owned()),
                        headers,
                        value: serde_json::from_slice(message.payload().unwrap_or_default())
                            .unwrap_or(Value::Null),
                    };
                    if tx.send(record).is_err() {
                        return;
                    }
                }
            }
        });
        let mut records = Vec::new();
        let outcome = tokio::time::timeout(within, async {
            while !done(&records) {
                match rx.recv().await {
                    Some(record) => records.push(record),
                    None => break,
                }
            }
        })
        .await;
        let _ = stop_tx.send(());
        let _ = reader.join();
        assert!(
            outcome.is_ok() && done(&records),
            "condition not met; read {} records: {records:#?}",
            records.len()
        );
        records
    }

    /// The committed position of `group` on `topic`'s `partition`.
    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut query = TopicPartitionList::new();
        query.add_partition(topic, partition);
        let committed = consumer
            .committed_offsets(query, Duration::from_secs(5))
            .ok()?;
        match committed.find_partition(topic, partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
