//! The Kafka bus against a real Kafka-protocol broker process (tansu): events, durability,
//! backpressure, commands and backend replies.

use gateway_testkit as common;

use std::{collections::HashMap, sync::Arc, time::Duration};

use common::{boot_payload, broker::Broker, broker::Record, TestGateway, STEP};

use crate::process::{free_port, GatewayProcess};
use serde_json::{json, Value};

fn kafka_config(broker: &Broker) -> impl FnOnce(&mut charge_point_gateway::Config) + '_ {
    move |c| {
        c.kafka.brokers = broker.address.clone();
        c.kafka.topic_partitions = 2;
        c.kafka.topic_replication = 1;
        c.kafka.delivery_timeout = Duration::from_secs(2);
        c.backend.actions = Vec::new();
    }
}

async fn start(
    broker: &Broker,
    adjust: impl FnOnce(&mut charge_point_gateway::Config),
) -> TestGateway {
    let base = kafka_config(broker);
    let gw = TestGateway::start_with(|c| {
        base(c);
        adjust(c);
    })
    .await;
    wait_ready(&gw, true).await;
    gw
}

async fn wait_ready(gw: &TestGateway, ready: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = gw.get("/readyz").await;
        if (status == 200) == ready {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never became {ready}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!("{}/../../schemas/kafka/{name}", env!("CARGO_MANIFEST_DIR"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

fn message_ids(records: &[Record], cp: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| {
            r.value["subject"] == cp && r.value["type"] == "chargepointgateway.message.received"
        })
        .map(|r| r.value["data"]["messageId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn events_arrive_keyed_in_order_with_headers_and_a_valid_envelope() {
    let broker = Broker::start().await;
    let gw = start(&broker, |_| {}).await;
    let status16 = json!({"connectorId": 1, "errorCode": "NoError", "status": "Available"});
    let status2 = json!({"timestamp": "2024-01-01T00:00:00Z", "connectorStatus": "Available", "evseId": 1, "connectorId": 1});
    // Kept open: a closed event per client would race the counts below.
    let mut clients = Vec::new();
    for (cp, version) in [
        ("K-16", "ocpp1.6"),
        ("K-201", "ocpp2.0.1"),
        ("K-21", "ocpp2.1"),
    ] {
        let mut client = gw.connect(cp, &[version]).await;
        let status = if version == "ocpp1.6" {
            status16.clone()
        } else {
            status2.clone()
        };
        for (i, (action, payload)) in [
            ("BootNotification", boot_payload(version)),
            ("Heartbeat", json!({})),
            ("StatusNotification", status),
            ("Heartbeat", json!({})),
        ]
        .into_iter()
        .enumerate()
        {
            let reply = client.call(&format!("{cp}-{i}"), action, payload).await;
            assert_eq!(reply[0], 3, "{reply}");
        }
        clients.push(client);
    }
    let expected = |cp: &str| (0..4).map(|i| format!("{cp}-{i}")).collect::<Vec<_>>();
    let records = broker
        .read_until("ocpp.events", |records| {
            ["K-16", "K-201", "K-21"]
                .iter()
                .all(|cp| message_ids(records, cp) == expected(cp))
        })
        .await;
    let validator = schema("event.schema.json");
    for record in &records {
        assert_eq!(
            record.key.as_deref(),
            record.value["subject"].as_str(),
            "key is the charge point id"
        );
        assert_eq!(
            record.headers.get("content-type").map(String::as_str),
            Some("application/cloudevents+json")
        );
        let errors: Vec<String> = validator
            .iter_errors(&record.value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", record.value);
    }
    let boot = records
        .iter()
        .find(|r| r.value["data"]["messageId"] == "K-21-0")
        .unwrap();
    assert_eq!(boot.value["data"]["ocppVersion"], "ocpp2.1");
    assert_eq!(boot.value["data"]["payload"], boot_payload("ocpp2.1"));
    assert!(records.iter().any(|r| r.value["subject"] == "K-16"
        && r.value["type"] == "chargepointgateway.connection.opened"));
    // 3 opened events and 12 messages, all acknowledged.
    let produced = r#"ocppgw_kafka_produce_total{topic="ocpp.events",outcome="ok"}"#;
    assert_eq!(gw.sample(produced).await, Some(15.0));
    let latency = r#"ocppgw_kafka_produce_duration_seconds_count{topic="ocpp.events"}"#;
    assert_eq!(gw.sample(latency).await, Some(15.0));
    assert_eq!(gw.sample("ocppgw_kafka_connected").await, Some(1.0));
    // With Kafka on, every documented metric is registered.
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    let registered: Vec<&str> = gw.probe.metric_names();
    for name in doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
    {
        let base = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            registered.contains(&base),
            "{name} not registered with Kafka on"
        );
    }
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_when_the_broker_stalls() {
    let broker = Broker::start().await;
    let gw = start(&broker, |_| {}).await;
    let mut cp = gw.connect("D-1", &["ocpp1.6"]).await;
    let mut acknowledged = Vec::new();
    let status = json!({"connectorId": 1, "errorCode": "NoError", "status": "Charging"});
    assert_eq!(
        cp.call("boot", "BootNotification", boot_payload("ocpp1.6"))
            .await[0],
        3
    );
    acknowledged.push("boot".to_owned());

    broker.pause();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        cp.call("stalled", "StatusNotification", status.clone()),
    )
    .await
    .expect("answered within the delivery timeout");
    assert_eq!(
        reply[0], 4,
        "a durable CALL must not be acknowledged: {reply}"
    );
    assert_eq!(reply[2], "InternalError");
    let failed = r#"ocppgw_kafka_produce_total{topic="ocpp.events",outcome="error"}"#;
    assert_eq!(
        gw.sample(failed).await,
        Some(1.0),
        "exactly the stalled record failed"
    );
    let refused = r#"ocppgw_events_published_total{event_type="message_received",outcome="error"}"#;
    assert_eq!(gw.sample(refused).await, Some(1.0));
    wait_ready(&gw, false).await;
    assert_eq!(gw.sample("ocppgw_kafka_connected").await, Some(0.0));
    assert_eq!(gw.sample("ocppgw_ready").await, Some(0.0));
    let (_, ready) = gw.get("/readyz").await;
    assert!(
        ready["reason"].as_str().unwrap().contains("Kafka"),
        "{ready}"
    );

    broker.resume();
    wait_ready(&gw, true).await;
    // The charge point retries until the gateway acknowledges.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let id = format!("retry-{attempt}");
        let reply = cp.call(&id, "StatusNotification", status.clone()).await;
        if reply[0] == 3 {
            acknowledged.push(id);
            break;
        }
        assert!(
            attempt < 20,
            "never acknowledged after the broker returned: {reply}"
        );
    }
    let records = broker
        .read_until("ocpp.events", |records| {
            let ids = message_ids(records, "D-1");
            acknowledged.iter().all(|id| ids.contains(id))
        })
        .await;
    assert!(!records.is_empty());
}

#[tokio::test]
async fn a_saturated_producer_makes_sessions_wait_and_loses_nothing() {
    let broker = Broker::start().await;
    let gw = start(&broker, |c| {
        c.kafka.max_in_flight = 4;
        c.kafka.delivery_timeout = Duration::from_secs(20);
    })
    .await;
    let meter = json!({"connectorId": 1, "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [{"value": "1"}]}]});
    let mut cps = Vec::new();
    for i in 0..10 {
        cps.push(gw.connect(&format!("B-{i}"), &["ocpp1.6"]).await);
    }
    broker.pause();
    for cp in cps.iter_mut() {
        cp.send_json(json!([2, "m", "MeterValues", meter])).await;
    }
    let bus = gw.probe.bus().unwrap();
    let deadline = tokio::time::Instant::now() + STEP;
    while bus.in_flight() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "producer never saturated"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        bus.in_flight(),
        4,
        "never more than max_in_flight records outstanding"
    );
    broker.resume();
    for cp in cps.iter_mut() {
        let reply = tokio::time::timeout(Duration::from_secs(25), cp.frame())
            .await
            .unwrap();
        assert_eq!(reply[0], 3, "{reply}");
    }
    broker
        .read_until("ocpp.events", |records| {
            (0..10).all(|i| message_ids(records, &format!("B-{i}")) == ["m"])
        })
        .await;
}

fn results_by_id(records: &[Record]) -> HashMap<String, Vec<Value>> {
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    for record in records {
        let id = record.value["data"]["commandId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        by_id.entry(id).or_default().push(record.value.clone());
    }
    by_id
}

#[tokio::test]
async fn every_command_gets_exactly_one_result() {
    let broker = Broker::start().await;
    let gw = start(&broker, |c| c.kafka.topic_partitions = 1).await;
    let mut cp = gw.connect("CMD-1", &["ocpp1.6"]).await;
    // The charge point: Soft resets accepted, Hard resets refused, GetConfiguration ignored.
    let calls = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let seen = calls.clone();
    let charge_point = tokio::spawn(async move {
        loop {
            let call = match cp.receive().await {
                common::Received::Frame(frame) => frame,
                common::Received::Closed(_) => return,
            };
            seen.lock().unwrap().push(call.clone());
            let reply = match (call[2].as_str().unwrap(), call[3]["type"].as_str()) {
                ("Reset", Some("Soft")) | ("ClearCache", _) => {
                    json!([3, call[1], {"status": "Accepted"}])
                }
                ("Reset", _) => json!([4, call[1], "NotSupported", "not today", {}]),
                _ => continue,
            };
            cp.send_json(reply).await;
        }
    });
    let producer = broker.producer();
    let past = "2020-01-01T00:00:00Z";
    let records = [
        json!({"commandId": "c1", "chargePointId": "CMD-1", "action": "Reset", "payload": {"type": "Soft"}}).to_string(),
        json!({"commandId": "c2", "chargePointId": "CMD-1", "action": "Reset", "payload": {"type": "Hard"}}).to_string(),
        json!({"commandId": "c3", "chargePointId": "CMD-1", "action": "GetConfiguration", "payload": {}, "timeoutSeconds": 1}).to_string(),
        json!({"commandId": "c4", "chargePointId": "NOBODY", "action": "Reset", "payload": {"type": "Soft"}}).to_string(),
        json!({"commandId": "c5", "chargePointId": "CMD-1", "action": "Reset", "payload": {"type": "Soft"}, "expiresAt": past}).to_string(),
        json!({"commandId": "c6", "chargePointId": "CMD-1", "action": "Reset", "payload": {"type": "Sideways"}}).to_string(),
        json!({"commandId": "c7", "chargePointId": "CMD-1"}).to_string(),
        "this is not JSON".to_owned(),
        json!({"commandId": "c1", "chargePointId": "CMD-1", "action": "Reset", "payload": {"type": "Soft"}}).to_string(),
        json!({"commandId": "c9", "chargePointId": "CMD-1", "action": "ClearCache", "payload": {}}).to_string(),
        json!({"commandId": "c10", "chargePointId": "CMD-1", "action": "ClearCache", "payload": {}, "timeoutSeconds": u64::MAX}).to_string(),
        json!({"commandId": "", "chargePointId": "CMD-1", "action": "ClearCache", "payload": {}}).to_string(),
    ];
    for record in &records {
        broker
            .produce(&producer, "ocpp.commands", "CMD-1", record)
            .await;
    }
    let expected = [
        ("c1", "completed"),
        ("c2", "callError"),
        ("c3", "timeout"),
        ("c4", "notConnected"),
        ("c5", "expired"),
        ("c6", "invalid"),
        ("c7", "invalid"),
        ("c9", "completed"),
        ("c10", "invalid"),
        // An empty commandId gets the result the docs promise, so that whoever produced
        // the record learns why nothing happened.
        ("", "invalid"),
    ];
    let results = broker
        .read_until("ocpp.command-results", |records| {
            let by_id = results_by_id(records);
            expected.iter().all(|(id, _)| by_id.contains_key(*id))
        })
        .await;
    let validator = schema("command-result.schema.json");
    for record in &results {
        let errors: Vec<String> = validator
            .iter_errors(&record.value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", record.value);
        assert_eq!(
            record.key.as_deref(),
            record.value["data"]["chargePointId"].as_str()
        );
    }
    let by_id = results_by_id(&results);
    assert_eq!(
        by_id[""][0]["data"]["error"]["description"], "commandId must not be empty",
        "{:?}",
        by_id[""]
    );
    let timeouts =
        r#"ocppgw_commands_total{source="kafka",action="GetConfiguration",outcome="timeout"}"#;
    assert_eq!(gw.sample(timeouts).await, Some(1.0));
    let consumed = r#"ocppgw_commands_consumed_total{action="Reset"}"#;
    assert_eq!(
        gw.sample(consumed).await,
        Some(6.0),
        "c1, c2, c4, c5, c6 and the duplicate c1"
    );
    for (id, status) in expected {
        assert_eq!(
            by_id[id].len(),
            1,
            "{id} has exactly one result: {:?}",
            by_id[id]
        );
        assert_eq!(
            by_id[id][0]["data"]["status"], status,
            "{id}: {}",
            by_id[id][0]
        );
    }
    assert_eq!(
        by_id["c1"][0]["data"]["response"],
        json!({"status": "Accepted"})
    );
    assert_eq!(by_id["c2"][0]["data"]["error"]["code"], "NotSupported");
    assert_eq!(
        by_id["c6"][0]["data"]["error"]["violations"][0]["instancePath"],
        "/type"
    );
    let soft_resets = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c[2] == "Reset" && c[3]["type"] == "Soft")
        .count();
    assert_eq!(
        soft_resets, 1,
        "the duplicate c1 and the expired c5 are never sent"
    );
    // Every record, the poison one included, is eventually committed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while broker.committed("charge-point-gateway", "ocpp.commands", 0) != Some(records.len() as i64)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "offsets not committed: {:?}",
            broker.committed("charge-point-gateway", "ocpp.commands", 0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    charge_point.abort();
}

#[tokio::test]
async fn an_offset_is_committed_only_after_its_result() {
    let broker = Broker::start().await;
    let gw = start(&broker, |c| c.kafka.topic_partitions = 1).await;
    let mut cp = gw.connect("OFF-1", &["ocpp2.0.1"]).await;
    let producer = broker.producer();
    let first =
        json!({"commandId": "o1", "chargePointId": "OFF-1", "action": "ClearCache", "payload": {}});
    broker
        .produce(&producer, "ocpp.commands", "OFF-1", &first.to_string())
        .await;
    let call = cp.frame().await;
    let answer = json!([3, call[1], {"status": "Accepted"}]);
    cp.send_json(answer).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while broker.committed("charge-point-gateway", "ocpp.commands", 0) != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first offset never committed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The second command waits for a charge point that takes its time.
    let second = json!({"commandId": "o2", "chargePointId": "OFF-1", "action": "ClearCache", "payload": {}, "timeoutSeconds": 30});
    broker
        .produce(&producer, "ocpp.commands", "OFF-1", &second.to_string())
        .await;
    let call = cp.frame().await;
    for _ in 0..5 {
        assert_eq!(
            broker.committed("charge-point-gateway", "ocpp.commands", 0),
            Some(1),
            "committed before its result"
        );
    }
    cp.send_json(json!([3, call[1], {"status": "Accepted"}]))
        .await;
    broker
        .read_until("ocpp.command-results", |records| {
            results_by_id(records).contains_key("o2")
        })
        .await;
    while broker.committed("charge-point-gateway", "ocpp.commands", 0) != Some(2) {
        assert!(
            tokio::time::Instant::now() < deadline + Duration::from_secs(15),
            "second offset never committed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Plays the backend: answers every Authorize and StartTransaction event it reads.
async fn backend_round(broker: &Broker, cp: &str, message_id: &str, reply: Value) {
    broker
        .read_until("ocpp.events", |records| {
            message_ids(records, cp).iter().any(|id| id == message_id)
        })
        .await;
    let producer = broker.producer();
    let record = json!({"chargePointId": cp, "messageId": message_id, "payload": reply});
    broker
        .produce(&producer, "ocpp.replies", cp, &record.to_string())
        .await;
}

#[tokio::test]
async fn backend_answers_authorize_and_start_transaction() {
    let broker = Broker::start().await;
    let gw = start(&broker, |c| {
        c.backend = charge_point_gateway::config::BackendConfig::default();
        c.backend.reply_timeout = Duration::from_secs(20);
    })
    .await;
    let mut cp = gw.connect("BE-1", &["ocpp1.6"]).await;
    cp.send_json(json!([2, "a1", "Authorize", {"idTag": "TAG"}]))
        .await;
    backend_round(
        &broker,
        "BE-1",
        "a1",
        json!({"idTagInfo": {"status": "Blocked"}}),
    )
    .await;
    let reply = cp.frame().await;
    assert_eq!(
        reply,
        json!([3, "a1", {"idTagInfo": {"status": "Blocked"}}])
    );

    let start = json!({"connectorId": 1, "idTag": "TAG", "meterStart": 0, "timestamp": "2024-01-01T00:00:00Z"});
    cp.send_json(json!([2, "s1", "StartTransaction", start]))
        .await;
    backend_round(
        &broker,
        "BE-1",
        "s1",
        json!({"idTagInfo": {"status": "Accepted"}, "transactionId": 4242}),
    )
    .await;
    assert_eq!(cp.frame().await[2]["transactionId"], 4242);

    // An error reply becomes the CALLERROR, spelled for the charge point's version.
    cp.send_json(json!([2, "d1", "DataTransfer", {"vendorId": "acme"}]))
        .await;
    broker
        .read_until("ocpp.events", |records| {
            message_ids(records, "BE-1").iter().any(|id| id == "d1")
        })
        .await;
    let error = json!({"chargePointId": "BE-1", "messageId": "d1", "error": {"code": "FormatViolation", "description": "no"}});
    broker
        .produce(
            &broker.producer(),
            "ocpp.replies",
            "BE-1",
            &error.to_string(),
        )
        .await;
    assert_eq!(
        cp.frame().await,
        json!([4, "d1", "FormationViolation", "no", {}])
    );
}

#[tokio::test]
async fn without_a_backend_reply_the_fallbacks_apply() {
    let broker = Broker::start().await;
    let gw = start(&broker, |c| {
        c.backend = charge_point_gateway::config::BackendConfig::default();
        c.backend.reply_timeout = Duration::from_millis(500);
    })
    .await;
    let mut cp = gw.connect("FB-1", &["ocpp1.6"]).await;
    // Authorize falls back to the local policy (accept all by default).
    let reply = cp.call("a1", "Authorize", json!({"idTag": "TAG"})).await;
    assert_eq!(
        reply,
        json!([3, "a1", {"idTagInfo": {"status": "Accepted"}}])
    );
    // StartTransaction falls back to an error: a local transaction id would be unknown to the backend.
    let start = json!({"connectorId": 1, "idTag": "TAG", "meterStart": 0, "timestamp": "2024-01-01T00:00:00Z"});
    let reply = cp.call("s1", "StartTransaction", start).await;
    assert_eq!(reply[0], 4);
    assert_eq!(reply[2], "InternalError");
    // A reply that fails the response schema is not sent; the fallback applies.
    cp.send_json(json!([2, "a2", "Authorize", {"idTag": "TAG"}]))
        .await;
    let bad = json!({"chargePointId": "FB-1", "messageId": "a2", "payload": {"idTagInfo": {"status": "Maybe"}}});
    broker
        .produce(&broker.producer(), "ocpp.replies", "FB-1", &bad.to_string())
        .await;
    assert_eq!(cp.frame().await[2]["idTagInfo"]["status"], "Accepted");
}

#[tokio::test]
async fn the_gateway_starts_without_a_broker_and_connects_when_it_appears() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = TestGateway::start_with(|c| {
        c.kafka.brokers = format!("127.0.0.1:{port}");
        c.kafka.topic_replication = 1;
        c.kafka.delivery_timeout = Duration::from_secs(1);
    })
    .await;
    let (status, body) = gw.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let mut cp = gw.connect("NB-1", &["ocpp2.0.1"]).await;
    // Non-durable actions are answered; durable ones are refused while Kafka is away.
    assert_eq!(cp.call("h", "Heartbeat", json!({})).await[0], 3);
    let reply = cp
        .call("b", "BootNotification", boot_payload("ocpp2.0.1"))
        .await;
    assert_eq!(
        (reply[0].clone(), reply[2].clone()),
        (json!(4), json!("InternalError"))
    );
}

#[tokio::test]
async fn a_broker_that_comes_back_empty_is_recovered_from_by_itself() {
    let mut broker = Broker::start().await;
    let gw = start(&broker, |c| c.kafka.unready_after = Duration::from_secs(1)).await;
    let mut cp = gw.connect("RESTART-1", &["ocpp1.6"]).await;
    let status = json!({"connectorId": 1, "errorCode": "NoError", "status": "Available"});
    assert_eq!(
        cp.call("s0", "StatusNotification", status.clone()).await[0],
        3
    );
    broker.restart_empty().await;
    // Every durable CALL is refused until the gateway has its topics and a producer id
    // again; then one is acknowledged, without anyone restarting the gateway.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut attempt = 0;
    let acknowledged = loop {
        attempt += 1;
        let id = format!("s{attempt}");
        let reply = cp.call(&id, "StatusNotification", status.clone()).await;
        if reply[0] == 3 {
            break id;
        }
        assert_eq!(reply[0], 4, "{reply}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no durable CALL acknowledged within 90 s of the broker's restart: {reply}"
        );
    };
    // What was acknowledged is in the new broker.
    broker
        .read_until("ocpp.events", |records| {
            message_ids(records, "RESTART-1").contains(&acknowledged)
        })
        .await;
    wait_ready(&gw, true).await;
}

#[tokio::test]
async fn readiness_names_the_unreachable_broker_first() {
    let gw = TestGateway::start_with(|c| {
        // Nothing listens on the discard port.
        c.kafka.brokers = "127.0.0.1:9".into();
        c.kafka.topic_replication = 1;
        c.backend.actions = vec!["Authorize".into()];
    })
    .await;
    let (status, body) = gw.get("/readyz").await;
    assert_eq!(status, 503);
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("Kafka"), "{reason}");
    assert!(!reason.contains("reply consumer"), "{reason}");
    let (_, health) = gw.get("/health").await;
    // Subscribed, but no broker has given it a partition.
    let consumer = &health["components"]["commandConsumer"];
    assert_eq!(consumer["status"], "waiting_for_assignment", "{health}");
    assert_eq!(consumer["partitions"], json!([]), "{health}");
}

/// The gateway binary with Kafka on `broker`, on fixed ports so that a restart takes the
/// same ones.
fn spawn_gateway(broker: &Broker, ports: [u16; 3]) -> GatewayProcess {
    let [ocpp, admin, metrics] = ports.map(|port| format!("127.0.0.1:{port}"));
    std::process::Command::new(env!("CARGO_BIN_EXE_charge-point-gateway"))
        .args(["--listen", &ocpp, "--admin-listen", &admin])
        .args(["--metrics-listen", &metrics, "--events", "none"])
        .args(["--node-id", "restarted-node", "--log-level", "warn"])
        .env("CPGW_KAFKA__BROKERS", &broker.address)
        .env("CPGW_KAFKA__TOPIC_REPLICATION", "1")
        .env("CPGW_KAFKA__TOPIC_PARTITIONS", "1")
        // Restarted under the same node id, it rejoins the command group as the same
        // static member and gets its partition back without waiting for the dead one's
        // session. (With dynamic membership tansu 0.6 sometimes never completes the
        // rebalance after a member died: it expires the joining member along with it.)
        .env("CPGW_KAFKA__STATIC_MEMBERSHIP", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(GatewayProcess)
        .expect("the gateway binary starts")
}

/// Waits until the gateway on `admin` answers `/readyz` with 200.
async fn wait_binary_ready(admin: u16) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if ready {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway never ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A charge point on the gateway at `ocpp` that accepts every Reset until its connection
/// ends.
async fn resetting_charge_point(ocpp: u16, id: &str) -> tokio::task::JoinHandle<()> {
    let (mut cp, _) =
        common::connect_url(&format!("ws://127.0.0.1:{ocpp}/ocpp/{id}"), &["ocpp1.6"])
            .await
            .expect("connected");
    tokio::spawn(async move {
        loop {
            use futures_util::StreamExt;
            let Some(Ok(message)) = cp.ws.next().await else {
                return;
            };
            let Ok(call) = serde_json::from_str::<Value>(message.to_text().unwrap_or_default())
            else {
                continue;
            };
            if call[0] == 2 {
                cp.send_json(json!([3, call[1], {"status": "Accepted"}]))
                    .await;
            }
        }
    })
}

#[tokio::test]
async fn commands_resume_soon_after_the_gateway_is_killed_and_restarted() {
    let broker = Broker::start().await;
    let ports = [free_port(), free_port(), free_port()];
    let [ocpp, admin, _] = ports;
    let mut first = spawn_gateway(&broker, ports);
    wait_binary_ready(admin).await;
    let charge_point = resetting_charge_point(ocpp, "KILLED-1").await;
    let producer = broker.producer();
    let command = |id: &str| {
        json!({"commandId": id, "chargePointId": "KILLED-1", "action": "Reset", "payload": {"type": "Soft"}})
            .to_string()
    };
    let completed = |id: &'static str| {
        move |records: &[Record]| {
            results_by_id(records)
                .get(id)
                .is_some_and(|results| results[0]["data"]["status"] == "completed")
        }
    };
    broker
        .produce(&producer, "ocpp.commands", "KILLED-1", &command("before"))
        .await;
    broker
        .read_until("ocpp.command-results", completed("before"))
        .await;

    // kill -9: the dead gateway never leaves the consumer group.
    first.kill();
    charge_point.abort();
    let mut second = spawn_gateway(&broker, ports);
    wait_binary_ready(admin).await;
    let _charge_point = resetting_charge_point(ocpp, "KILLED-1").await;
    let sent = std::time::Instant::now();
    broker
        .produce(&producer, "ocpp.commands", "KILLED-1", &command("after"))
        .await;
    broker
        .read_until_within(
            "ocpp.command-results",
            Duration::from_secs(120),
            completed("after"),
        )
        .await;
    let waited = sent.elapsed();
    eprintln!("the first command after the restart took {waited:?}");
    second.kill();
    // Before, the group waited for the dead member's session: librdkafka's default of 45 s.
    assert!(
        waited < Duration::from_secs(20),
        "the first command after the restart took {waited:?}"
    );
}
