//! A listener behind a load balancer speaking PROXY protocol v2: the real client's address
//! for the limits and the admin API, refusals of untrusted sources and missing headers, and
//! TLS ended at the balancer with the client certificate's CN in the header.

use gateway_testkit as common;

use std::{io::Write, net::SocketAddr, time::Duration};

use charge_point_gateway::{listener::config::AddressRange, proxy_protocol, Config};
use common::{Cp, Io, TestGateway};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn start(trusted: &str, adjust: impl FnOnce(&mut Config)) -> TestGateway {
    let trusted: AddressRange = trusted.parse().unwrap();
    TestGateway::start_with(move |config| {
        config.listener.proxy_protocol = true;
        config.listener.trusted_proxies = vec![trusted];
        adjust(config);
    })
    .await
}

/// Connects as `id` through a "balancer" that sends `header` first.
async fn through_proxy(gw: &TestGateway, id: &str, header: &[u8]) -> Result<Cp, String> {
    let mut tcp = tokio::net::TcpStream::connect(gw.ocpp).await.unwrap();
    tcp.write_all(header).await.unwrap();
    let mut request = gw.url(id).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "ocpp1.6".parse().unwrap());
    let stream: Box<dyn Io> = Box::new(tcp);
    match tokio::time::timeout(
        common::STEP,
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    {
        Err(_) => panic!("handshake timed out"),
        Ok(Ok((ws, _))) => Ok(Cp { ws }),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

fn header_from(client: &str, tlvs: &[u8]) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    proxy_protocol::encode(client, "127.0.0.1:8080".parse().unwrap(), tlvs)
}

#[tokio::test]
async fn the_client_named_by_the_header_is_the_peer_and_counts_for_the_address_limit() {
    let gw = start("127.0.0.1", |config| {
        config.listener.max_connections_per_address = 1;
    })
    .await;
    let mut first = through_proxy(&gw, "CP-A", &header_from("198.51.100.7:40000", &[]))
        .await
        .unwrap();
    let reply = first.call("1", "Heartbeat", serde_json::json!({})).await;
    assert_eq!(reply[0], 3);
    let (_, connection) = gw.get("/api/v1/connections/CP-A").await;
    assert_eq!(connection["peerAddress"], "198.51.100.7:40000");

    // One connection per client address, not per balancer address.
    let refused = through_proxy(&gw, "CP-B", &header_from("198.51.100.7:40001", &[])).await;
    assert!(refused.is_err());
    assert_eq!(gw.connection_attempts("address_limit").await, 1.0);
    through_proxy(&gw, "CP-C", &header_from("198.51.100.8:40000", &[]))
        .await
        .expect("another client behind the same balancer");

    // A connection without the header is refused.
    let refused = through_proxy(&gw, "CP-D", b"").await;
    assert!(refused.is_err());
    assert_eq!(gw.connection_attempts("bad_proxy_header").await, 1.0);
}

#[tokio::test]
async fn only_trusted_proxies_may_connect() {
    let gw = start("10.0.0.0/8", |_| {}).await;
    let refused = through_proxy(&gw, "CP-A", &header_from("198.51.100.7:1", &[])).await;
    assert!(refused.is_err());
    assert_eq!(gw.connection_attempts("untrusted_proxy").await, 1.0);
    assert_eq!(gw.connection_attempts("accepted").await, 0.0);
}

#[tokio::test]
async fn tls_ended_at_the_balancer_passes_the_certificates_cn_for_profile_3() {
    let mut credentials = tempfile::NamedTempFile::new().unwrap();
    writeln!(credentials, r#"{{"id": "CP-3", "profile": 3}}"#).unwrap();
    let path = credentials.path().to_owned();
    let gw = start("127.0.0.1", move |config| {
        config.auth.credentials_file = Some(path);
        config.auth.failure_backoff_initial = Duration::ZERO;
        config.auth.failure_backoff_max = Duration::ZERO;
    })
    .await;
    let with_ssl = |cn: Option<&str>, verified| {
        header_from(
            "198.51.100.7:1",
            &proxy_protocol::encode_ssl_tlv(cn, verified),
        )
    };
    through_proxy(&gw, "CP-3", &with_ssl(Some("CP-3"), true))
        .await
        .expect("the balancer verified CP-3's certificate");
    for (header, why) in [
        (
            with_ssl(Some("CP-9"), true),
            "another charge point's certificate",
        ),
        (
            with_ssl(Some("CP-3"), false),
            "a certificate the balancer did not verify",
        ),
        (with_ssl(None, true), "no certificate"),
        (header_from("198.51.100.7:1", &[]), "no TLS at the balancer"),
    ] {
        let refused = through_proxy(&gw, "CP-3", &header).await.err();
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("401")),
            "{why}: {refused:?}"
        );
    }
}

#[tokio::test]
async fn a_listener_without_the_proxy_protocol_takes_no_header_for_granted() {
    let gw = TestGateway::start().await;
    // The header's bytes are not an HTTP request: refused as such, never believed.
    let refused = through_proxy(&gw, "CP-A", &header_from("198.51.100.7:1", &[])).await;
    assert!(refused.is_err());
    assert_eq!(gw.connection_attempts("bad_request").await, 1.0);
}
