//! Commands through the admin API: every outcome, validation, and the session's queue.

use gateway_testkit as common;

use common::{TestGateway, STEP};
use serde_json::{json, Value};

const RESET_16: &str = r#"{"action": "Reset", "payload": {"type": "Soft"}}"#;

fn reset_16() -> Value {
    serde_json::from_str(RESET_16).unwrap()
}

#[tokio::test]
async fn completed_when_the_charge_point_answers() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("CP-1", &["ocpp1.6"]).await;
    let command = gw.command("CP-1", reset_16());
    let call = cp.frame().await;
    assert_eq!(call[0], 2);
    assert_eq!(call[2], "Reset");
    assert_eq!(call[3], json!({"type": "Soft"}));
    let (_, pending) = gw.get("/api/v1/connections/CP-1").await;
    assert_eq!(pending["pendingCall"]["action"], "Reset");
    cp.send_json(json!([3, call[1], {"status": "Accepted"}]))
        .await;
    let (status, body) = command.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "completed", "response": {"status": "Accepted"}})
    );
    let event = gw
        .wait_for_event("CP-1", |e| e["data"]["messageType"] == "callResult")
        .await;
    assert_eq!(event["data"]["action"], "Reset");
    assert_eq!(event["data"]["payload"], json!({"status": "Accepted"}));
}

#[tokio::test]
async fn call_error_when_the_charge_point_refuses() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("CP-1", &["ocpp2.0.1"]).await;
    let command = gw.command(
        "CP-1",
        json!({"action": "Reset", "payload": {"type": "Immediate"}}),
    );
    let call = cp.frame().await;
    cp.send_json(json!([4, call[1], "NotSupported", "no resets today", {"why": "busy"}]))
        .await;
    let (status, body) = command.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["status"], "callError");
    assert_eq!(body["error"]["code"], "NotSupported");
    assert_eq!(body["error"]["description"], "no resets today");
    assert_eq!(body["error"]["details"], json!({"why": "busy"}));
    assert_eq!(body["error"]["origin"], "chargePoint");
}

#[tokio::test]
async fn invalid_response_is_a_gateway_call_error_and_21_gets_callresulterror() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("CP-1", &["ocpp2.1"]).await;
    let command = gw.command(
        "CP-1",
        json!({"action": "Reset", "payload": {"type": "Immediate"}}),
    );
    let call = cp.frame().await;
    cp.send_json(json!([3, call[1], {"status": "Maybe"}])).await;
    let callresulterror = cp.frame().await;
    assert_eq!(callresulterror[0], 5, "{callresulterror}");
    assert_eq!(callresulterror[1], call[1]);
    assert_eq!(callresulterror[2], "PropertyConstraintViolation");
    let (status, body) = command.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["status"], "callError");
    assert_eq!(body["error"]["origin"], "gateway");
    assert_eq!(body["error"]["code"], "PropertyConstraintViolation");
}

#[tokio::test]
async fn timeout_when_the_charge_point_stays_silent() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("CP-1", &["ocpp1.6"]).await;
    let mut body = reset_16();
    body["timeoutSeconds"] = json!(1);
    let command = gw.command("CP-1", body);
    let call = cp.frame().await;
    let (status, body) = tokio::time::timeout(STEP, command).await.unwrap().unwrap();
    assert_eq!(status, 504);
    assert_eq!(body["status"], "timeout");
    // The slot is free again and a late answer is harmless.
    cp.send_json(json!([3, call[1], {"status": "Accepted"}]))
        .await;
    let next = gw.command("CP-1", reset_16());
    let call2 = cp.frame().await;
    assert_ne!(call2[1], call[1]);
    cp.send_json(json!([3, call2[1], {"status": "Rejected"}]))
        .await;
    let (status, body) = next.await.unwrap();
    assert_eq!(
        (status, body["response"]["status"].clone()),
        (200, json!("Rejected"))
    );
}

#[tokio::test]
async fn not_connected() {
    let gw = TestGateway::start().await;
    let (status, body) = gw
        .post("/api/v1/charge-points/NOBODY/commands", reset_16())
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["status"], "notConnected");
}

#[tokio::test]
async fn disconnect_before_answer_is_not_connected() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("CP-1", &["ocpp1.6"]).await;
    let command = gw.command("CP-1", reset_16());
    cp.frame().await;
    drop(cp);
    let (status, body) = command.await.unwrap();
    assert_eq!(
        (status, body["status"].clone()),
        (404, json!("notConnected"))
    );
}

#[tokio::test]
async fn invalid_commands_are_rejected_before_sending() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("CP-1", &["ocpp1.6"]).await;
    let cases = [
        json!({"action": "Reset", "payload": {"type": "Sideways"}}),
        json!({"action": "Reset", "payload": {}}),
        json!({"action": "RequestStartTransaction", "payload": {}}),
        json!({"action": "BootNotification", "payload": {}}),
        json!({"action": "Reset"}),
        json!({"action": "Reset", "payload": {"type": "Soft"}, "timeoutSeconds": 0}),
    ];
    for case in cases {
        let (status, body) = gw
            .post("/api/v1/charge-points/CP-1/commands", case.clone())
            .await;
        assert_eq!(status, 400, "{case} -> {body}");
        assert_eq!(body["status"], "invalid", "{body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (_, body) = gw
        .post(
            "/api/v1/charge-points/CP-1/commands",
            json!({"action": "Reset", "payload": {"type": "Sideways"}}),
        )
        .await;
    assert_eq!(body["violations"][0]["instancePath"], "/type");
    // Nothing reached the charge point: the next frame it sees is the answer to its own CALL.
    assert_eq!(cp.call("hb", "Heartbeat", json!({})).await[1], "hb");
}

#[tokio::test]
async fn calls_wait_in_a_bounded_queue_one_at_a_time() {
    let gw = TestGateway::start_with(|c| c.session.call_queue_size = 1).await;
    let mut cp = gw.connect("CP-1", &["ocpp1.6"]).await;
    let first = gw.command("CP-1", reset_16());
    let call1 = cp.frame().await;
    let second = gw.command("CP-1", json!({"action": "ClearCache", "payload": {}}));
    // Wait until the second is visibly queued behind the first.
    let deadline = tokio::time::Instant::now() + STEP;
    while gw.get("/api/v1/connections/CP-1").await.1["queuedCalls"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "second command never queued"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let third = gw
        .post(
            "/api/v1/charge-points/CP-1/commands",
            json!({"action": "ClearCache", "payload": {}}),
        )
        .await;
    assert_eq!(third.0, 429);
    assert_eq!(third.1["status"], "queueFull");
    cp.send_json(json!([3, call1[1], {"status": "Accepted"}]))
        .await;
    let call2 = cp.frame().await;
    assert_eq!(call2[2], "ClearCache");
    cp.send_json(json!([3, call2[1], {"status": "Accepted"}]))
        .await;
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(second.await.unwrap().0, 200);
}
