//! Commands under churn: three nodes share Redis and a real Kafka-protocol broker, 30
//! charge points flap between them, one node leaves and another joins (a consumer-group
//! rebalance) while 10,000 commands arrive through the admin API and Kafka, and Redis
//! blinks now and then for longer than the nodes' `redis_timeout`. Every command gets
//! exactly one result, and no charge point receives a command twice (counted at the
//! charge point).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use charge_point_gateway::Config;
use futures_util::{SinkExt, StreamExt};
use gateway_testkit as common;

use common::{broker::Broker, redis::RedisServer, TestGateway};

use crate::cluster::{cluster_settings, owner, wait_until};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const FLEET: usize = 30;
const ADMIN_COMMANDS: usize = 5000;
const KAFKA_COMMANDS: usize = 5000;

fn configure(redis: &RedisServer, broker: &Broker, node: &str) -> impl FnOnce(&mut Config) {
    let cluster = cluster_settings(vec![redis.url()], node);
    let brokers = broker.address.clone();
    move |config| {
        cluster(config);
        config.kafka.brokers = brokers;
        config.kafka.topic_partitions = 3;
        config.kafka.delivery_timeout = Duration::from_secs(5);
        config.kafka.command_session_timeout = Duration::from_secs(6);
        config.backend.actions = Vec::new();
        config.session.call_timeout = Duration::from_secs(2);
        // A burst of commands for one charge point waits its turn instead of failing.
        config.session.call_queue_size = 64;
    }
}

async fn start_node(redis: &RedisServer, broker: &Broker, name: &str) -> TestGateway {
    start_node_with(redis, broker, name, |_| {}).await
}

async fn start_node_with(
    redis: &RedisServer,
    broker: &Broker,
    name: &str,
    adjust: impl FnOnce(&mut Config),
) -> TestGateway {
    let configure = configure(redis, broker, name);
    let gw = TestGateway::start_with(|config| {
        configure(config);
        adjust(config);
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, health) = gw.get("/health").await;
        let assigned = health["components"]["commandConsumer"]["status"] != "down";
        if status == 200 && assigned {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never ready: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw
}

/// Where the fleet connects and where admin commands go: the nodes alive now.
#[derive(Default)]
struct Live {
    ocpp: Mutex<Vec<SocketAddr>>,
    admin: Mutex<Vec<SocketAddr>>,
}

impl Live {
    fn add(&self, gw: &TestGateway) {
        self.ocpp.lock().push(gw.ocpp);
        self.admin.lock().push(gw.admin);
    }

    fn remove(&self, gw: &TestGateway) {
        self.ocpp.lock().retain(|a| *a != gw.ocpp);
        self.admin.lock().retain(|a| *a != gw.admin);
    }

    fn pick(list: &Mutex<Vec<SocketAddr>>, n: usize) -> SocketAddr {
        let list = list.lock();
        list[n % list.len()]
    }
}

/// One charge point: connects to a node, answers every CALL (counting the command id it
/// carries), and after a while reconnects to the next node, until `stop`.
async fn flap(
    index: usize,
    live: Arc<Live>,
    received: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
) {
    let id = format!("CP-{index}");
    let mut round = index;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let address = Live::pick(&live.ocpp, round);
        // A node that is stopping refuses or resets: the charge point tries the next one.
        let Some(mut ws) = connect(address, &id).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let stay = Duration::from_millis(150 + (round * 37 % 300) as u64);
        let until = tokio::time::Instant::now() + stay;
        loop {
            let next = tokio::time::timeout_at(until, ws.next()).await;
            let Ok(Some(Ok(message))) = next else { break };
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            if frame[0] != 2 {
                continue;
            }
            let command = frame[3]["data"].as_str().unwrap_or_default().to_owned();
            *received.lock().entry(command).or_default() += 1;
            let reply = json!([3, frame[1], {"status": "Accepted"}]).to_string();
            if ws.send(Message::text(reply)).await.is_err() {
                break;
            }
        }
        let _ = ws.close(None).await;
    }
}

/// A 1.6 charge point's WebSocket to `address`, or `None` when the node refuses it.
async fn connect(
    address: SocketAddr,
    id: &str,
) -> Option<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{address}/ocpp/{id}")
        .into_client_request()
        .ok()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "ocpp1.6".parse().ok()?);
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(request),
    )
    .await;
    connected.ok()?.ok().map(|(ws, _)| ws)
}

fn data_transfer(command: &str) -> Value {
    json!({"vendorId": "churn", "data": command})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_has_one_result_and_reaches_its_charge_point_once_under_churn() {
    let redis = RedisServer::start().await;
    let broker = Broker::start().await;
    let a = start_node(&redis, &broker, "node-a").await;
    let b = start_node(&redis, &broker, "node-b").await;
    let mut c = start_node(&redis, &broker, "node-c").await;
    let live = Arc::new(Live::default());
    for gw in [&a, &b, &c] {
        live.add(gw);
    }
    let received = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let fleet: Vec<_> = (0..FLEET)
        .map(|i| tokio::spawn(flap(i, live.clone(), received.clone(), stop.clone())))
        .collect();

    // Kafka commands, produced in the background.
    let producer = broker.producer();
    let kafka = {
        let producer = producer.clone();
        let address = broker.address.clone();
        tokio::spawn(async move {
            let _ = address;
            let mut sends = futures_util::stream::iter(0..KAFKA_COMMANDS)
                .map(|i| {
                    let producer = producer.clone();
                    async move {
                        let id = format!("k-{i}");
                        let record = json!({
                            "commandId": id,
                            "chargePointId": format!("CP-{}", i % FLEET),
                            "action": "DataTransfer",
                            "payload": data_transfer(&id),
                            "timeoutSeconds": 2,
                        })
                        .to_string();
                        producer
                            .send(
                                rdkafka::producer::FutureRecord::to("ocpp.commands")
                                    .key(&id)
                                    .payload(&record),
                                Duration::from_secs(10),
                            )
                            .await
                            .map_err(|(e, _)| e)
                            .expect("command produced");
                        // Spread over the run, so that the churn below meets traffic.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
                .buffer_unordered(8);
            while sends.next().await.is_some() {}
        })
    };

    // Redis freezes for longer than the nodes wait for it, every few seconds: requests
    // time out on the nodes and are executed late by Redis.
    let blinking = Arc::new(AtomicBool::new(true));
    let blinks = {
        let (freezer, blinking) = (redis.freezer(), blinking.clone());
        tokio::spawn(async move {
            let mut count = 0;
            while blinking.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                freezer.stall(Duration::from_millis(800)).await;
                count += 1;
            }
            count
        })
    };

    // Admin commands, 32 at a time, to whichever nodes are alive; a node leaves after a
    // third and another joins after two thirds.
    let http = reqwest::Client::new();
    let statuses = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let admin = {
        let (live, statuses, sent, http) =
            (live.clone(), statuses.clone(), sent.clone(), http.clone());
        tokio::spawn(async move {
            let mut requests = futures_util::stream::iter(0..ADMIN_COMMANDS)
                .map(|i| {
                    let (live, statuses, sent, http) = (live.clone(), statuses.clone(), sent.clone(), http.clone());
                    async move {
                        let id = format!("a-{i}");
                        let body = json!({"action": "DataTransfer", "payload": data_transfer(&id), "timeoutSeconds": 2});
                        let node = Live::pick(&live.admin, i);
                        let url = format!("http://{node}/api/v1/charge-points/CP-{}/commands", i % FLEET);
                        let status = match http.post(url).json(&body).send().await {
                            Ok(response) => {
                                let body: Value = response.json().await.unwrap_or_default();
                                body["status"].as_str().unwrap_or("unreadable").to_owned()
                            }
                            // The node was stopped under the request: counted, not a result.
                            Err(_) => "node_gone".to_owned(),
                        };
                        *statuses.lock().entry(status).or_default() += 1;
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .buffer_unordered(32);
            while requests.next().await.is_some() {}
        })
    };
    let wait_for = |count: usize| {
        let sent = sent.clone();
        async move {
            while sent.load(Ordering::Relaxed) < count {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), wait_for(ADMIN_COMMANDS / 3))
        .await
        .expect("a third of the admin commands sent");
    live.remove(&c);
    c.stop().await;
    tokio::time::timeout(Duration::from_secs(120), wait_for(2 * ADMIN_COMMANDS / 3))
        .await
        .expect("two thirds of the admin commands sent");
    let d = start_node(&redis, &broker, "node-d").await;
    live.add(&d);
    tokio::time::timeout(Duration::from_secs(180), admin)
        .await
        .expect("admin commands done")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), kafka)
        .await
        .expect("kafka commands produced")
        .unwrap();
    blinking.store(false, Ordering::Relaxed);
    let blinked = blinks.await.unwrap();
    assert!(blinked >= 2, "Redis froze only {blinked} times");

    // Every Kafka command has exactly one result.
    // Read until every command has a result, or the time is up (then the asserts below
    // name what is missing).
    let give_up = std::time::Instant::now() + Duration::from_secs(120);
    let results = broker
        .read_until_within(
            "ocpp.command-results",
            Duration::from_secs(150),
            |records| {
                let ids: std::collections::HashSet<&str> = records
                    .iter()
                    .filter_map(|r| r.value["data"]["commandId"].as_str())
                    .collect();
                ids.len() >= KAFKA_COMMANDS || std::time::Instant::now() > give_up
            },
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    for cp in fleet {
        cp.await.unwrap();
    }
    let mut per_command = HashMap::<String, Vec<String>>::new();
    for record in &results {
        let data = &record.value["data"];
        per_command
            .entry(data["commandId"].as_str().unwrap().to_owned())
            .or_default()
            .push(data["status"].as_str().unwrap().to_owned());
    }
    let twice: Vec<_> = per_command.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(twice.is_empty(), "commands with several results: {twice:?}");
    let missing: Vec<String> = (0..KAFKA_COMMANDS)
        .map(|i| format!("k-{i}"))
        .filter(|id| !per_command.contains_key(id))
        .collect();
    assert!(missing.is_empty(), "commands without a result: {missing:?}");

    // No charge point received a command twice, and every completed command was received.
    let received = received.lock();
    let repeated: Vec<_> = received.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "commands received twice: {repeated:?}");
    for (id, statuses) in &per_command {
        if statuses[0] == "completed" {
            assert!(
                received.contains_key(id),
                "{id} completed but never received"
            );
        }
    }
    let statuses = statuses.lock();
    assert_eq!(statuses.values().sum::<usize>(), ADMIN_COMMANDS);
    let mut kafka_statuses = HashMap::<&str, usize>::new();
    for statuses in per_command.values() {
        *kafka_statuses.entry(statuses[0].as_str()).or_default() += 1;
    }
    assert!(
        statuses.get("completed").copied().unwrap_or(0) > ADMIN_COMMANDS / 10,
        "{statuses:?}"
    );
    assert!(
        kafka_statuses.get("completed").copied().unwrap_or(0) > KAFKA_COMMANDS / 10,
        "{kafka_statuses:?}"
    );
    eprintln!(
        "admin: {statuses:?}; kafka: {kafka_statuses:?}; commands received by charge points: {}; Redis froze {blinked} times",
        received.len()
    );
    drop((a, b, d));
}

#[tokio::test]
async fn a_command_re_read_gets_one_result_whatever_the_node_before_it_did() {
    let redis = RedisServer::start().await;
    let broker = Broker::start().await;
    let gw = start_node(&redis, &broker, "node-a").await;
    let day = "86400000";
    // Another node answered this command before its partition moved here.
    redis
        .command(&["SET", "cpgw:command:answered", "done", "PX", day])
        .await
        .unwrap();
    // Another node began sending this one and died without a result.
    redis
        .command(&[
            "SET",
            "cpgw:command:orphaned",
            "pending node-gone 0123",
            "PX",
            day,
        ])
        .await
        .unwrap();
    let producer = broker.producer();
    for id in ["answered", "orphaned", "fresh"] {
        let record = json!({
            "commandId": id,
            "chargePointId": "CP-NONE",
            "action": "ClearCache",
            "payload": {},
        });
        broker
            .produce(&producer, "ocpp.commands", id, &record.to_string())
            .await;
    }
    let results = broker
        .read_until("ocpp.command-results", |records| {
            ["orphaned", "fresh"]
                .iter()
                .all(|id| records.iter().any(|r| r.value["data"]["commandId"] == *id))
        })
        .await;
    // Offsets are committed only past handled records: once all three are committed,
    // "answered" was handled too, without a result.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (0..3)
        .map(|p| {
            broker
                .committed("charge-point-gateway", "ocpp.commands", p)
                .unwrap_or(0)
        })
        .sum::<i64>()
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "offsets never committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = results.len();
    let results = broker
        .read_until("ocpp.command-results", |records| records.len() >= seen)
        .await;
    let status_of = |id: &str| -> Vec<String> {
        results
            .iter()
            .filter(|r| r.value["data"]["commandId"] == id)
            .map(|r| r.value["data"]["status"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        status_of("answered").is_empty(),
        "an answered command gets no second result"
    );
    assert_eq!(status_of("orphaned"), ["unknown"]);
    assert_eq!(status_of("fresh"), ["notConnected"]);
    let orphaned = results
        .iter()
        .find(|r| r.value["data"]["commandId"] == "orphaned")
        .unwrap();
    assert!(
        orphaned.value["data"]["error"]["description"]
            .as_str()
            .unwrap()
            .contains("node-gone"),
        "{}",
        orphaned.value
    );
    // Its result is marked, so a later re-read skips it.
    assert_eq!(
        redis.command(&["GET", "cpgw:command:fresh"]).await.unwrap(),
        "done"
    );
    drop(gw);
}

/// A node whose mark request times out must not send the command on a guess: the
/// request may still reach Redis late, or another node may be sending the command. It
/// asks again, recognises its own mark, and sends once Redis has confirmed it.
#[tokio::test]
async fn a_command_read_while_redis_is_frozen_is_sent_once_its_mark_is_confirmed() {
    let redis = RedisServer::start().await;
    let broker = Broker::start().await;
    // Redis is frozen below for longer than a request waits and than a lookup and a
    // mark together, but shorter than the lease.
    let lease_time = Duration::from_secs(8);
    let frozen_for = Duration::from_secs(3);
    let gw = start_node_with(&redis, &broker, "node-a", |config| {
        config.cluster.lease_time = lease_time;
        assert!(config.cluster.redis_timeout * 3 < frozen_for && frozen_for < lease_time);
    })
    .await;
    let mut cp = gw.connect("CP-1", &["ocpp1.6"]).await;
    wait_until(Duration::from_secs(10), || async {
        owner(&redis, "CP-1").await == "node-a"
    })
    .await;
    let charge_point = tokio::spawn(async move {
        let call = cp.frame().await;
        let received_at = tokio::time::Instant::now();
        cp.send_json(json!([3, call[1], {"status": "Accepted"}]))
            .await;
        (cp, received_at, call)
    });

    let freezer = redis.freezer();
    freezer.freeze().await;
    let producer = broker.producer();
    let record = json!({
        "commandId": "frozen",
        "chargePointId": "CP-1",
        "action": "DataTransfer",
        "payload": data_transfer("frozen"),
        "timeoutSeconds": 10,
    });
    broker
        .produce(&producer, "ocpp.commands", "frozen", &record.to_string())
        .await;
    tokio::time::sleep(frozen_for).await;
    let thawed_at = tokio::time::Instant::now();
    freezer.thaw().await;

    let (_cp, received_at, call) = charge_point.await.unwrap();
    assert_eq!(call[3]["data"], "frozen");
    assert!(
        received_at >= thawed_at,
        "the command reached the charge point {:?} before Redis confirmed its mark",
        thawed_at - received_at
    );
    let results = broker
        .read_until("ocpp.command-results", |records| {
            records
                .iter()
                .any(|r| r.value["data"]["commandId"] == "frozen")
        })
        .await;
    let statuses: Vec<_> = results
        .iter()
        .filter(|r| r.value["data"]["commandId"] == "frozen")
        .map(|r| r.value["data"]["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("completed")]);
    wait_until(Duration::from_secs(10), || async {
        redis
            .command(&["GET", "cpgw:command:frozen"])
            .await
            .unwrap_or_default()
            == "done"
    })
    .await;
    drop(gw);
}
