//! Handshake cases against the real listener: subprotocols, fallback, refusals, ids.

use gateway_testkit as common;

use common::{boot_payload, TestGateway};
use serde_json::json;

#[tokio::test]
async fn each_subprotocol_is_negotiated_and_echoed() {
    let gw = TestGateway::start().await;
    for (i, version) in ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"].into_iter().enumerate() {
        let id = format!("CP-{i}");
        let (mut cp, protocol) = gw.try_connect(&id, &[version]).await.expect("accepted");
        assert_eq!(protocol.as_deref(), Some(version));
        let reply = cp
            .call("1", "BootNotification", boot_payload(version))
            .await;
        assert_eq!(reply[0], 3, "{reply}");
        assert_eq!(reply[2]["status"], "Accepted");
        let (status, info) = gw.get(&format!("/api/v1/connections/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(info["ocppVersion"], version);
    }
}

#[tokio::test]
async fn server_preference_wins_among_offers() {
    let gw = TestGateway::start().await;
    let (_cp, protocol) = gw
        .try_connect("CP-P", &["ocpp1.6", "ocpp2.0.1"])
        .await
        .unwrap();
    assert_eq!(protocol.as_deref(), Some("ocpp2.0.1"));

    let gw16 = TestGateway::start_with(|c| {
        c.listener.subprotocols = vec!["ocpp1.6".parse().unwrap(), "ocpp2.0.1".parse().unwrap()]
    })
    .await;
    let (_cp, protocol) = gw16
        .try_connect("CP-P", &["ocpp2.0.1", "ocpp1.6"])
        .await
        .unwrap();
    assert_eq!(protocol.as_deref(), Some("ocpp1.6"));
}

#[tokio::test]
async fn no_subprotocol_falls_back_to_16() {
    let gw = TestGateway::start().await;
    let (mut cp, protocol) = gw.try_connect("CP-NONE", &[]).await.expect("accepted");
    assert_eq!(protocol, None);
    let reply = cp
        .call("1", "BootNotification", boot_payload("ocpp1.6"))
        .await;
    assert_eq!(reply[2]["status"], "Accepted");
    let (_, info) = gw.get("/api/v1/connections/CP-NONE").await;
    assert_eq!(info["ocppVersion"], "ocpp1.6");
    let opened = gw
        .wait_for_event("CP-NONE", |e| {
            e["type"] == "chargepointgateway.connection.opened"
        })
        .await;
    assert_eq!(opened["data"]["subprotocolFallback"], true);
}

#[tokio::test]
async fn no_subprotocol_is_refused_without_fallback() {
    let gw = TestGateway::start_with(|c| c.listener.fallback_subprotocol = None).await;
    assert_eq!(
        gw.try_connect("CP-1", &[]).await.err().map(|s| s.as_u16()),
        Some(400)
    );
}

#[tokio::test]
async fn unsupported_offers_are_refused() {
    let gw = TestGateway::start().await;
    let status = gw
        .try_connect("CP-1", &["ocpp1.5", "ocpp3.0"])
        .await
        .err()
        .unwrap();
    assert_eq!(status.as_u16(), 400);
    let only201 = TestGateway::start_with(|c| {
        c.listener.subprotocols = vec!["ocpp2.0.1".parse().unwrap()];
        c.listener.fallback_subprotocol = None;
    })
    .await;
    let status = only201
        .try_connect("CP-1", &["ocpp1.6"])
        .await
        .err()
        .unwrap();
    assert_eq!(status.as_u16(), 400);
    let (_, body) = gw.get("/api/v1/connections").await;
    assert_eq!(body["total"], 0);
}

#[tokio::test]
async fn bad_ids_and_paths_are_refused() {
    let gw = TestGateway::start().await;
    for (id, status) in [
        ("a%20b", 400),
        ("a%2Fb", 400),
        ("%FF%FE", 400),
        (&"X".repeat(49), 400),
        ("", 404),
        ("a/b", 404),
    ] {
        let refused = gw.try_connect(id, &["ocpp1.6"]).await.err();
        assert_eq!(refused.map(|s| s.as_u16()), Some(status), "id {id:?}");
    }
    let wrong_prefix =
        common::connect_url(&format!("ws://{}/other/CP-1", gw.ocpp), &["ocpp1.6"]).await;
    assert_eq!(wrong_prefix.err().map(|s| s.as_u16()), Some(404));
}

#[tokio::test]
async fn percent_encoded_ids_are_decoded() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("CP%3A01%2A", &["ocpp1.6"]).await;
    let reply = cp.call("1", "Heartbeat", json!({})).await;
    assert_eq!(reply[0], 3);
    let (status, info) = gw.get("/api/v1/connections/CP:01*").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["chargePointId"], "CP:01*");
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    let gw = TestGateway::start_with(|c| c.listener.max_connections = 1).await;
    let _first = gw.connect("CP-1", &["ocpp1.6"]).await;
    let refused = gw.try_connect("CP-2", &["ocpp1.6"]).await.err();
    assert_eq!(refused.map(|s| s.as_u16()), Some(503));
    // At capacity, a charge point may still replace its own connection.
    let mut again = gw.connect("CP-1", &["ocpp1.6"]).await;
    assert_eq!(again.call("1", "Heartbeat", json!({})).await[0], 3);
}
