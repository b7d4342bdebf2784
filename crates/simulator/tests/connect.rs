//! What the simulator puts on the wire when it connects: Basic auth, TLS with a private CA,
//! and the subprotocol check. The servers here are real tokio-tungstenite and rustls
//! listeners on 127.0.0.1:0 that record what they received.

use std::{sync::Arc, time::Duration};

use charge_point_simulator::connect::{ConnectError, Connector, TlsOptions};
use futures_util::StreamExt;
use ocpp::OcppVersion;
use tokio::{net::TcpListener, sync::oneshot};
use tokio_tungstenite::tungstenite::{
    handshake::server::{Request, Response},
    http::HeaderValue,
};

const STEP: Duration = Duration::from_secs(5);

/// Accepts one WebSocket upgrade on `listener`, agreeing to the offered subprotocol when
/// `agree` is set, and reports the request's Authorization header and path.
fn accept_one<S>(stream: S, agree: bool) -> oneshot::Receiver<(Option<String>, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (seen, received) = oneshot::channel();
    tokio::spawn(async move {
        let mut record = None;
        // The callback's signature is tungstenite's; its error type is an HTTP response.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, mut response: Response| {
            record = Some((
                request
                    .headers()
                    .get("authorization")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned),
                request.uri().path().to_owned(),
            ));
            if agree {
                if let Some(offered) = request.headers().get("sec-websocket-protocol") {
                    response
                        .headers_mut()
                        .insert("sec-websocket-protocol", offered.clone());
                }
            } else {
                response
                    .headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static("other"));
            }
            Ok(response)
        };
        let socket = tokio_tungstenite::accept_hdr_async(stream, callback).await;
        if let Some(record) = record {
            let _ = seen.send(record);
        }
        // Keep the connection until the client goes.
        if let Ok(mut socket) = socket {
            while let Some(Ok(_)) = socket.next().await {}
        }
    });
    received
}

#[tokio::test]
async fn basic_auth_carries_the_id_and_the_password_with_its_id_filled_in() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ocpp", listener.local_addr().unwrap());
    let connector = Connector::new(
        &url,
        &TlsOptions::default(),
        Some("secret-{id}".into()),
        vec![],
        STEP,
    )
    .unwrap();
    let accepted = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        accept_one(stream, true).await.unwrap()
    });
    let socket = connector
        .connect("CP-7", OcppVersion::V201, 0)
        .await
        .expect("the upgrade succeeds");
    let (authorization, path) = accepted.await.unwrap();
    // base64("CP-7:secret-CP-7")
    assert_eq!(
        authorization.as_deref(),
        Some("Basic Q1AtNzpzZWNyZXQtQ1AtNw==")
    );
    assert_eq!(path, "/ocpp/CP-7");
    drop(socket);
}

#[tokio::test]
async fn a_server_that_picks_another_subprotocol_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ocpp", listener.local_addr().unwrap());
    let connector = Connector::new(&url, &TlsOptions::default(), None, vec![], STEP).unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        accept_one(stream, false).await
    });
    let error = connector
        .connect("CP-1", OcppVersion::V16, 0)
        .await
        .expect_err("a different subprotocol is an error");
    assert!(
        matches!(
            error,
            ConnectError::Subprotocol {
                offered: "ocpp1.6",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(error.kind(), "connect_subprotocol");
    let (authorization, _) = server.await.unwrap().unwrap();
    assert_eq!(authorization, None, "no password, no Authorization header");
}

#[tokio::test]
async fn wss_trusts_a_private_ca_given_with_ca_file() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("cpsim-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, certified.cert.pem()).unwrap();

    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![certified.cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(stream).await.expect("TLS handshake");
        accept_one(tls, true).await.unwrap()
    });

    let url = format!("wss://localhost:{port}/ocpp");
    let trusted = Connector::new(
        &url,
        &TlsOptions {
            ca_file: Some(ca_file.clone()),
            ..TlsOptions::default()
        },
        None,
        vec![],
        STEP,
    )
    .unwrap();
    let socket = trusted
        .connect("CP-TLS", OcppVersion::V21, 0)
        .await
        .expect("the private CA is trusted");
    let (_, path) = tokio::time::timeout(STEP, server).await.unwrap().unwrap();
    assert_eq!(path, "/ocpp/CP-TLS");
    drop(socket);

    let missing = Connector::new(
        &url,
        &TlsOptions {
            ca_file: Some(dir.join("missing.pem")),
            ..TlsOptions::default()
        },
        None,
        vec![],
        STEP,
    )
    .err()
    .expect("a missing CA file is a configuration error");
    assert!(missing.to_string().contains("--ca-file"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_counted_as_refused() {
    // Bind then drop: nothing listens on the port afterwards.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let connector = Connector::new(
        &format!("ws://127.0.0.1:{port}/ocpp"),
        &TlsOptions::default(),
        None,
        vec![],
        STEP,
    )
    .unwrap();
    let error = connector
        .connect("CP-1", OcppVersion::V16, 0)
        .await
        .expect_err("refused");
    assert_eq!(error.kind(), "connect_refused");
}
