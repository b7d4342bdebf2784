//! Error handling over the wire, per version: every bad input gets the spec's CALLERROR
//! or close code, and never affects another connection.

use gateway_testkit as common;

use common::{boot_payload, GateSink, TestGateway};
use serde_json::{json, Value};

fn assert_call_error(reply: &Value, id: &str, code: &str) {
    assert_eq!(reply[0], 4, "{reply}");
    assert_eq!(reply[1], id, "{reply}");
    assert_eq!(reply[2], code, "{reply}");
    assert!(reply[3].is_string() && reply[4].is_object(), "{reply}");
}

#[tokio::test]
async fn malformed_frames_get_version_specific_codes() {
    let gw = TestGateway::start().await;
    for (version, formation, rpc) in [
        ("ocpp1.6", "FormationViolation", "ProtocolError"),
        ("ocpp2.0.1", "FormatViolation", "RpcFrameworkError"),
        ("ocpp2.1", "FormatViolation", "RpcFrameworkError"),
    ] {
        let mut cp = gw.connect(&format!("CP-{version}"), &[version]).await;
        cp.send_text("[2, \"1\", \"Heartbeat\", {").await;
        assert_call_error(&cp.frame().await, "-1", formation);
        cp.send_text("{\"not\": \"an array\"}").await;
        assert_call_error(&cp.frame().await, "-1", rpc);
        cp.send_text("[2, \"7\", \"Heartbeat\"]").await;
        assert_call_error(&cp.frame().await, "7", rpc);
        cp.send_text("[2, \"8\", \"Heartbeat\", []]").await;
        assert_call_error(&cp.frame().await, "8", formation);
        // A broken response is not answered; the next CALL still is.
        cp.send_text("[3, \"9\"]").await;
        let reply = cp.call("10", "Heartbeat", json!({})).await;
        assert_eq!(reply[0], 3, "{reply}");
        assert_eq!(reply[1], "10");
    }
}

#[tokio::test]
async fn unknown_message_types() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("CP-201", &["ocpp2.0.1"]).await;
    cp.send_text(r#"[6, "1", "NotifyPeriodicEventStream", {}]"#)
        .await;
    assert_call_error(&cp.frame().await, "1", "MessageTypeNotSupported");
    let mut cp = gw.connect("CP-16", &["ocpp1.6"]).await;
    cp.send_text(r#"[9, "1", "Heartbeat", {}]"#).await;
    assert_call_error(&cp.frame().await, "1", "ProtocolError");
}

#[tokio::test]
async fn unknown_and_wrong_direction_actions() {
    let gw = TestGateway::start().await;
    for version in ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"] {
        let mut cp = gw.connect(&format!("CP-{version}"), &[version]).await;
        assert_call_error(
            &cp.call("1", "MakeCoffee", json!({})).await,
            "1",
            "NotImplemented",
        );
        let csms_only = if version == "ocpp1.6" {
            "RemoteStartTransaction"
        } else {
            "RequestStartTransaction"
        };
        assert_call_error(
            &cp.call("2", csms_only, json!({})).await,
            "2",
            "NotSupported",
        );
    }
}

#[tokio::test]
async fn schema_violations_per_version() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("CP-16", &["ocpp1.6"]).await;
    let missing = cp
        .call("1", "BootNotification", json!({"chargePointVendor": "A"}))
        .await;
    assert_call_error(&missing, "1", "OccurenceConstraintViolation");
    assert_eq!(missing[4]["violations"][0]["instancePath"], "");
    let wrong_type = cp
        .call(
            "2",
            "BootNotification",
            json!({"chargePointVendor": 1, "chargePointModel": "M"}),
        )
        .await;
    assert_call_error(&wrong_type, "2", "TypeConstraintViolation");
    assert_eq!(
        wrong_type[4]["violations"][0]["instancePath"],
        "/chargePointVendor"
    );
    let too_long = cp
        .call(
            "3",
            "BootNotification",
            json!({"chargePointVendor": "A".repeat(21), "chargePointModel": "M"}),
        )
        .await;
    assert_call_error(&too_long, "3", "PropertyConstraintViolation");
    let extra = cp.call("4", "Heartbeat", json!({"surprise": 1})).await;
    assert_call_error(&extra, "4", "FormationViolation");

    let mut cp = gw.connect("CP-201", &["ocpp2.0.1"]).await;
    let missing = cp
        .call("1", "BootNotification", json!({"reason": "PowerUp"}))
        .await;
    assert_call_error(&missing, "1", "OccurrenceConstraintViolation");
    let extra = cp.call("2", "Heartbeat", json!({"surprise": 1})).await;
    assert_call_error(&extra, "2", "FormatViolation");
    let bad_enum = cp
        .call(
            "3",
            "BootNotification",
            json!({"reason": "Bored", "chargingStation": {"vendorName": "A", "model": "M"}}),
        )
        .await;
    assert_call_error(&bad_enum, "3", "PropertyConstraintViolation");
}

#[tokio::test]
async fn zoneless_timestamps_are_accepted_by_default_and_rejected_when_strict() {
    let status = json!({"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": "2024-05-01T10:00:00"});
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("CP-1", &["ocpp1.6"]).await;
    assert_eq!(
        cp.call("1", "StatusNotification", status.clone()).await[0],
        3
    );

    let strict =
        TestGateway::start_with(|c| c.validation.accept_timestamps_without_zone = false).await;
    let mut cp = strict.connect("CP-1", &["ocpp1.6"]).await;
    assert_call_error(
        &cp.call("1", "StatusNotification", status).await,
        "1",
        "PropertyConstraintViolation",
    );
}

#[tokio::test]
async fn oversized_message_closes_with_1009_without_affecting_others() {
    let gw = TestGateway::start_with(|c| c.listener.max_message_size = 4096).await;
    let mut bystander = gw.connect("CP-OK", &["ocpp1.6"]).await;
    let mut cp = gw.connect("CP-BIG", &["ocpp1.6"]).await;
    let big = json!([2, "1", "DataTransfer", {"vendorId": "x", "data": "y".repeat(5000)}]);
    cp.send_json(big).await;
    assert_eq!(cp.closed().await, (1009, "message_too_big".to_owned()));
    assert_eq!(bystander.call("1", "Heartbeat", json!({})).await[0], 3);
    let closed = gw
        .wait_for_event("CP-BIG", |e| {
            e["type"] == "chargepointgateway.connection.closed"
        })
        .await;
    assert_eq!(closed["data"]["reason"], "message_too_big");
    assert_eq!(closed["data"]["closeCode"], 1009);
}

#[tokio::test]
async fn binary_frame_closes_with_1003() {
    use futures_util::SinkExt;
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("CP-BIN", &["ocpp2.0.1"]).await;
    cp.ws
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            1u8, 2, 3,
        ]))
        .await
        .unwrap();
    assert_eq!(cp.closed().await, (1003, "binary_frame".to_owned()));
}

#[tokio::test]
async fn a_run_of_bad_messages_closes_with_1008_and_good_ones_reset_it() {
    let gw = TestGateway::start_with(|c| c.session.bad_message_limit = 3).await;
    let mut cp = gw.connect("CP-BAD", &["ocpp1.6"]).await;
    cp.send_text("nonsense").await;
    cp.frame().await;
    cp.send_text("nonsense").await;
    cp.frame().await;
    // A good message resets the run.
    assert_eq!(cp.call("1", "Heartbeat", json!({})).await[0], 3);
    for _ in 0..2 {
        cp.send_text("nonsense").await;
        assert_eq!(cp.frame().await[0], 4);
    }
    cp.send_text("nonsense").await;
    assert_eq!(cp.frame().await[0], 4);
    assert_eq!(
        cp.closed().await,
        (1008, "too_many_bad_messages".to_owned())
    );
}

#[tokio::test]
async fn duplicate_in_flight_message_id_is_rejected_and_order_is_kept() {
    let sink = GateSink::new(false);
    let gw = TestGateway::start_with_sink(|_| {}, sink.clone()).await;
    let mut cp = gw.connect("CP-DUP", &["ocpp2.0.1"]).await;
    let status = json!({"timestamp": "2024-01-01T00:00:00Z", "connectorStatus": "Available", "evseId": 1, "connectorId": 1});
    // StatusNotification is durable: its answer waits for the (closed) gate.
    cp.send_json(json!([2, "A", "StatusNotification", status]))
        .await;
    cp.send_json(json!([2, "A", "Heartbeat", {}])).await;
    assert_call_error(&cp.frame().await, "A", "RpcFrameworkError");
    cp.send_json(json!([2, "B", "Heartbeat", {}])).await;
    sink.set_open(true);
    let first = cp.frame().await;
    let second = cp.frame().await;
    assert_eq!((first[0].clone(), first[1].clone()), (json!(3), json!("A")));
    assert_eq!(
        (second[0].clone(), second[1].clone()),
        (json!(3), json!("B"))
    );
}

#[tokio::test]
async fn durable_call_gets_internal_error_when_the_sink_fails() {
    let sink = GateSink::new(true);
    let gw = TestGateway::start_with_sink(|_| {}, sink.clone()).await;
    let mut cp = gw.connect("CP-FAIL", &["ocpp1.6"]).await;
    assert_eq!(
        cp.call("1", "BootNotification", boot_payload("ocpp1.6"))
            .await[0],
        3
    );
    sink.set_failing(true);
    let reply = cp
        .call("2", "BootNotification", boot_payload("ocpp1.6"))
        .await;
    assert_call_error(&reply, "2", "InternalError");
    // Non-durable actions are still answered.
    assert_eq!(cp.call("3", "Heartbeat", json!({})).await[0], 3);
    sink.set_failing(false);
    assert_eq!(
        cp.call("4", "BootNotification", boot_payload("ocpp1.6"))
            .await[0],
        3
    );
}

#[tokio::test]
async fn a_stalled_sink_holds_calls_in_order_and_loses_none() {
    let sink = GateSink::new(false);
    let gw = TestGateway::start_with_sink(|c| c.session.inbound_queue_size = 2, sink.clone()).await;
    let mut cp = gw.connect("CP-SLOW", &["ocpp1.6"]).await;
    let meter = json!({"connectorId": 1, "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [{"value": "1"}]}]});
    for i in 0..20 {
        cp.send_json(json!([2, i.to_string(), "MeterValues", meter]))
            .await;
    }
    // While the first CALL waits for durability nothing else is submitted (the rest wait
    // in the bounded queue or in TCP buffers): one opened event plus one CALL at most.
    assert!(sink.submitted.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    sink.set_open(true);
    for i in 0..20 {
        let reply = cp.frame().await;
        assert_eq!(reply[0], 3, "{reply}");
        assert_eq!(reply[1], i.to_string());
    }
    assert!(sink.submitted.load(std::sync::atomic::Ordering::SeqCst) >= 20);
}

#[tokio::test]
async fn refused_actions_do_not_count_as_bad_messages_but_violations_do() {
    let gw = TestGateway::start_with(|c| c.session.bad_message_limit = 2).await;
    let mut cp = gw.connect("CP-V", &["ocpp2.1"]).await;
    for i in 0..5 {
        let reply = cp
            .call(&i.to_string(), "VendorSpecificThing", json!({}))
            .await;
        assert_call_error(&reply, &i.to_string(), "NotImplemented");
    }
    let send_as_call = cp.call("p", "NotifyPeriodicEventStream", json!({})).await;
    assert_call_error(&send_as_call, "p", "NotSupported");
    // Two schema violations in a row: both answered, then the connection closes.
    assert_call_error(
        &cp.call("a", "Heartbeat", json!({"x": 1})).await,
        "a",
        "FormatViolation",
    );
    assert_call_error(
        &cp.call("b", "Heartbeat", json!({"x": 1})).await,
        "b",
        "FormatViolation",
    );
    assert_eq!(
        cp.closed().await,
        (1008, "too_many_bad_messages".to_owned())
    );
}

#[tokio::test]
async fn an_abrupt_disconnect_is_a_lost_connection() {
    let gw = TestGateway::start().await;
    let cp = gw.connect("CP-GONE", &["ocpp1.6"]).await;
    drop(cp);
    let closed = gw
        .wait_for_event("CP-GONE", |e| {
            e["type"] == "chargepointgateway.connection.closed"
        })
        .await;
    assert_eq!(closed["data"]["reason"], "connection_lost");
    assert_eq!(closed["data"]["closeCode"], Value::Null);
}
