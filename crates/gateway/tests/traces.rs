//! OpenTelemetry traces, received by a test OTLP/HTTP (JSON) receiver: an inbound CALL's
//! SERVER span parents the PRODUCER span of its Kafka record, whose `traceparent` header
//! names them; a command joins the trace in its record's headers.

use gateway_testkit as common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{routing::post, Json, Router};
use charge_point_gateway::telemetry::traces;
use common::{boot_payload, broker::Broker, TestGateway};
use opentelemetry_otlp::Protocol;
use serde_json::{json, Value};
use tracing_subscriber::prelude::*;

const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const PRODUCER: i64 = 4;
const CONSUMER: i64 = 5;

type Received = Arc<Mutex<Vec<Value>>>;

async fn otlp_receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |Json(body): Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/v1/traces"), received)
}

/// Every exported span, flattened.
fn spans(received: &Received) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|body| {
            body["resourceSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

fn kind(span: &Value) -> i64 {
    span["kind"].as_i64().unwrap_or_default()
}

#[tokio::test]
async fn traces_link_calls_records_and_commands() {
    let (endpoint, received) = otlp_receiver().await;
    let provider = traces::provider(Some(&endpoint), Some(Protocol::HttpJson)).unwrap();
    // As the binary does: the log filter is per layer, so trace export is independent of
    // it (here: log output at "warn" beside the exporter).
    tracing_subscriber::registry()
        .with(traces::layer(&provider))
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let broker = Broker::start().await;
    let gw = TestGateway::start_with(|c| {
        c.kafka.brokers = broker.address.clone();
        c.kafka.topic_partitions = 1;
        c.kafka.topic_replication = 1;
        c.backend.actions = Vec::new();
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while gw.get("/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An inbound CALL and its event record.
    let mut cp = gw.connect("TR-1", &["ocpp2.0.1"]).await;
    assert_eq!(
        cp.call("boot-1", "BootNotification", boot_payload("ocpp2.0.1"))
            .await[0],
        3
    );
    let records = broker
        .read_until("ocpp.events", |r| {
            r.iter().any(|r| r.value["data"]["messageId"] == "boot-1")
        })
        .await;
    let record = records
        .iter()
        .find(|r| r.value["data"]["messageId"] == "boot-1")
        .unwrap();
    let traceparent = record
        .headers
        .get("traceparent")
        .expect("traceparent header")
        .clone();

    // A command that carries the backend's trace.
    let backend_trace = "0af7651916cd43dd8448eb211c80319c";
    let backend_span = "b7ad6b7169203331";
    let command = json!({"commandId": "trace-1", "chargePointId": "TR-1", "action": "ClearCache", "payload": {}});
    let parent = format!("00-{backend_trace}-{backend_span}-01");
    broker
        .produce_with_headers(
            &broker.producer(),
            "ocpp.commands",
            "TR-1",
            &command.to_string(),
            &[("traceparent", &parent)],
        )
        .await;
    let call = cp.frame().await;
    cp.send_json(json!([3, call[1], {"status": "Accepted"}]))
        .await;
    let results = broker
        .read_until("ocpp.command-results", |r| {
            r.iter().any(|r| r.value["data"]["commandId"] == "trace-1")
        })
        .await;
    let result_parent = results[0]
        .headers
        .get("traceparent")
        .expect("result traceparent")
        .clone();

    // The command's spans end when its task does, just after the result is acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let flusher = provider.clone();
        tokio::task::spawn_blocking(move || flusher.force_flush())
            .await
            .unwrap()
            .unwrap();
        let spans = spans(&received);
        if spans.iter().any(|s| kind(s) == CONSUMER) || tokio::time::Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let server = spans
        .iter()
        .find(|s| kind(s) == SERVER && attribute(s, "rpc.method") == Some("BootNotification"))
        .unwrap_or_else(|| panic!("no SERVER span for the CALL: {spans:#?}"));
    assert_eq!(attribute(server, "rpc.system"), Some("ocpp"));
    assert_eq!(attribute(server, "ocpp.message_id"), Some("boot-1"));
    assert_eq!(attribute(server, "charge_point_id"), Some("TR-1"));
    let producer = spans
        .iter()
        .find(|s| kind(s) == PRODUCER && s["parentSpanId"] == server["spanId"])
        .expect("a PRODUCER span under the CALL");
    assert_eq!(attribute(producer, "messaging.system"), Some("kafka"));
    assert_eq!(
        attribute(producer, "messaging.destination.name"),
        Some("ocpp.events")
    );
    assert_eq!(producer["traceId"], server["traceId"]);
    let expected = format!(
        "00-{}-{}-01",
        server["traceId"].as_str().unwrap(),
        producer["spanId"].as_str().unwrap()
    );
    let exemplar = format!(
        r#"# {{trace_id="{}"}}"#,
        server["traceId"].as_str().unwrap()
    );
    let scrape = gw.scrape().await;
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("ocppgw_ingest_duration_seconds_bucket{")
                && l.contains("action=\"BootNotification\"")
                && l.contains(&exemplar)),
        "the ingest histogram carries the CALL's trace id as an exemplar: {}",
        scrape
            .lines()
            .filter(|l| l.contains("ingest_duration_seconds_bucket") && l.contains("Boot"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        traceparent, expected,
        "the record's traceparent names the PRODUCER span"
    );

    let consumer = spans
        .iter()
        .find(|s| kind(s) == CONSUMER)
        .unwrap_or_else(|| {
            panic!(
                "no CONSUMER span: {:?}",
                spans
                    .iter()
                    .map(|s| (
                        s["name"].clone(),
                        kind(s),
                        s["traceId"].clone(),
                        s["parentSpanId"].clone()
                    ))
                    .collect::<Vec<_>>()
            )
        });
    assert_eq!(consumer["traceId"], backend_trace);
    assert_eq!(consumer["parentSpanId"], backend_span);
    let client = spans
        .iter()
        .find(|s| kind(s) == CLIENT)
        .expect("a CLIENT span for the CALL to the charge point");
    assert_eq!(client["parentSpanId"], consumer["spanId"]);
    assert_eq!(attribute(client, "rpc.method"), Some("ClearCache"));
    let result_producer = spans
        .iter()
        .find(|s| {
            kind(s) == PRODUCER
                && attribute(s, "messaging.destination.name") == Some("ocpp.command-results")
        })
        .expect("a PRODUCER span for the result");
    assert_eq!(result_producer["parentSpanId"], consumer["spanId"]);
    assert_eq!(result_producer["traceId"], backend_trace);
    assert!(
        result_parent.starts_with(&format!("00-{backend_trace}-")),
        "{result_parent}"
    );
    // The session span is not exported: each CALL is a trace of its own.
    assert!(spans.iter().all(|s| s["name"] != "session"));
}
