//! The `wss://` listener: security profiles 2 and 3 with real OpenSSL clients, the cipher
//! suites OCPP requires, TLS versions, client certificate refusals, and certificate reload
//! while connections stay open.

use gateway_testkit as common;

use std::{io::Write, time::Duration};

use charge_point_gateway::{
    auth::password::PasswordHashString,
    config::{CertificateFiles, TlsVersion},
    Config,
};
use common::{
    basic_authorization,
    pki::{Issued, Pki, TlsClient, Validity},
    Cp, Refused, TestGateway, STEP,
};
use openssl::ssl::SslVersion;
use serde_json::json;
use tempfile::NamedTempFile;

const PASSWORD: &[u8] = b"correct-horse-battery";

fn credentials() -> NamedTempFile {
    let hash = PasswordHashString::hash(PASSWORD).unwrap();
    let mut file = NamedTempFile::new().unwrap();
    for (id, profile) in [("CP-1", 1), ("CP-2", 2)] {
        writeln!(
            file,
            "{}",
            json!({"id": id, "profile": profile, "password_hash": hash.as_str()})
        )
        .unwrap();
    }
    for id in ["CP-3", "CP-3b"] {
        writeln!(file, "{}", json!({"id": id, "profile": 3})).unwrap();
    }
    file
}

fn files(issued: &Issued) -> CertificateFiles {
    CertificateFiles {
        certificate_file: issued.certificate_file.clone(),
        key_file: issued.key_file.clone(),
    }
}

async fn start(
    pki: &Pki,
    credentials: &NamedTempFile,
    adjust: impl FnOnce(&mut Config),
) -> TestGateway {
    let certificates = vec![files(&pki.server_rsa()), files(&pki.server_ecdsa())];
    let ca_file = pki.ca_file.clone();
    let credentials = credentials.path().to_owned();
    TestGateway::start_with(move |config| {
        config.tls.certificates = certificates;
        config.tls.client_ca_file = Some(ca_file);
        config.auth.credentials_file = Some(credentials);
        config.auth.failure_backoff_initial = Duration::ZERO;
        config.auth.failure_backoff_max = Duration::ZERO;
        adjust(config);
    })
    .await
}

async fn heartbeat(cp: &mut Cp) {
    let reply = cp.call("h", "Heartbeat", json!({})).await;
    assert_eq!(reply[0], 3, "{reply}");
}

#[tokio::test]
async fn profiles_2_and_3_connect_over_tls_and_every_refusal_is_counted() {
    let pki = Pki::new("Charging CA");
    let credentials = credentials();
    let gw = start(&pki, &credentials, |_| {}).await;
    let verified = TlsClient {
        ca_file: Some(&pki.ca_file),
        ..TlsClient::default()
    };
    let basic = || Some(basic_authorization("CP-2", PASSWORD));

    // Profile 2: TLS and the password. Profile 1 over TLS is fine too.
    let mut cp2 = gw
        .connect_tls("CP-2", "ocpp1.6", basic(), &verified)
        .await
        .unwrap();
    heartbeat(&mut cp2).await;
    gw.connect_tls(
        "CP-1",
        "ocpp2.0.1",
        Some(basic_authorization("CP-1", PASSWORD)),
        &verified,
    )
    .await
    .unwrap();
    assert_eq!(
        gw.connect_tls("CP-2", "ocpp1.6", None, &verified)
            .await
            .err(),
        Some(Refused::Http(http_status(401)))
    );

    // Profile 3: the certificate is the credential.
    let cp3_certificate = pki.client("CP-3", Some("Acme Charging"), Validity::Current);
    let with_certificate = |certificate| TlsClient {
        ca_file: Some(&pki.ca_file),
        certificate: Some(certificate),
        ..TlsClient::default()
    };
    let mut cp3 = gw
        .connect_tls(
            "CP-3",
            "ocpp2.0.1",
            None,
            &with_certificate(&cp3_certificate),
        )
        .await
        .unwrap();
    heartbeat(&mut cp3).await;
    let mismatch_before = gw.auth_results("3", "certificate_mismatch").await;
    assert_eq!(
        gw.connect_tls(
            "CP-3b",
            "ocpp2.0.1",
            None,
            &with_certificate(&cp3_certificate)
        )
        .await
        .err(),
        Some(Refused::Http(http_status(401))),
        "a certificate for CP-3 is not one for CP-3b"
    );
    assert_eq!(
        gw.auth_results("3", "certificate_mismatch").await,
        mismatch_before + 1.0
    );
    assert_eq!(
        gw.connect_tls("CP-3", "ocpp2.0.1", None, &verified)
            .await
            .err(),
        Some(Refused::Http(http_status(401))),
        "profile 3 without a certificate"
    );
    assert_eq!(gw.auth_results("3", "missing_certificate").await, 1.0);

    // Certificates that do not verify end the TLS handshake itself.
    let expired = pki.client("CP-3", None, Validity::Expired);
    let stranger_ca = Pki::new("Someone else's CA");
    let stranger = stranger_ca.client("CP-3", None, Validity::Current);
    for certificate in [&expired, &stranger] {
        let refused = gw
            .connect_tls("CP-3", "ocpp2.0.1", None, &with_certificate(certificate))
            .await
            .err()
            .expect("refused");
        assert!(matches!(refused, Refused::Tls(_)), "{refused:?}");
    }
    assert_eq!(gw.connection_attempts("certificate_refused").await, 2.0);
    assert_eq!(
        gw.sample("ocppgw_tls_handshakes_total{result=\"certificate_refused\"}")
            .await,
        Some(2.0)
    );
    gw.wait_for_event("127.0.0.1", |e| {
        e["type"] == "chargepointgateway.security.certificate_refused"
    })
    .await;

    // Nothing of this disturbed the charge points already connected.
    heartbeat(&mut cp2).await;
    heartbeat(&mut cp3).await;
}

fn http_status(code: u16) -> tokio_tungstenite::tungstenite::http::StatusCode {
    tokio_tungstenite::tungstenite::http::StatusCode::from_u16(code).unwrap()
}

#[tokio::test]
async fn the_operator_name_must_be_in_the_certificates_organization() {
    let pki = Pki::new("Charging CA");
    let credentials = credentials();
    let gw = start(&pki, &credentials, |config| {
        config.tls.operator_name = Some("Acme".into());
    })
    .await;
    let connect = |organization| {
        let certificate = pki.client("CP-3", organization, Validity::Current);
        let gw = &gw;
        let ca_file = pki.ca_file.clone();
        async move {
            let client = TlsClient {
                ca_file: Some(&ca_file),
                certificate: Some(&certificate),
                ..TlsClient::default()
            };
            gw.connect_tls("CP-3", "ocpp1.6", None, &client).await.err()
        }
    };
    assert_eq!(connect(Some("Acme Charging Ltd")).await, None);
    assert_eq!(
        connect(Some("Other Operator")).await,
        Some(Refused::Http(http_status(401)))
    );
    assert_eq!(connect(None).await, Some(Refused::Http(http_status(401))));
}

#[tokio::test]
async fn each_cipher_suite_ocpp_requires_is_negotiated_alone() {
    let pki = Pki::new("Charging CA");
    let credentials = credentials();
    let gw = start(&pki, &credentials, |_| {}).await;
    let address = gw.tls.unwrap();
    for suite in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
    ] {
        let client = TlsClient {
            ca_file: Some(&pki.ca_file),
            cipher_list: Some(suite),
            max_version: Some(SslVersion::TLS1_2),
            ..TlsClient::default()
        };
        let stream = client
            .connect(address)
            .await
            .unwrap_or_else(|e| panic!("{suite}: {e}"));
        assert_eq!(stream.ssl().current_cipher().unwrap().name(), suite);
        assert_eq!(stream.ssl().version_str(), "TLSv1.2");
    }
    // A client that offers everything gets forward secrecy, and TLS 1.3 when it can.
    let client = TlsClient {
        ca_file: Some(&pki.ca_file),
        ..TlsClient::default()
    };
    let stream = client.connect(address).await.unwrap();
    assert_eq!(stream.ssl().version_str(), "TLSv1.3");
    let client = TlsClient {
        ca_file: Some(&pki.ca_file),
        max_version: Some(SslVersion::TLS1_2),
        ..TlsClient::default()
    };
    let stream = client.connect(address).await.unwrap();
    assert!(stream
        .ssl()
        .current_cipher()
        .unwrap()
        .name()
        .starts_with("ECDHE-"));
}

#[tokio::test]
async fn tls_1_1_is_refused_unless_the_legacy_option_allows_it() {
    let pki = Pki::new("Charging CA");
    let credentials = credentials();
    let old_client = TlsClient {
        ca_file: Some(&pki.ca_file),
        min_version: Some(SslVersion::TLS1_1),
        max_version: Some(SslVersion::TLS1_1),
        ..TlsClient::default()
    };
    let gw = start(&pki, &credentials, |_| {}).await;
    assert!(old_client.connect(gw.tls.unwrap()).await.is_err());
    assert_eq!(
        gw.sample("ocppgw_tls_handshakes_total{result=\"failed\"}")
            .await,
        Some(1.0)
    );
    let legacy = start(&pki, &credentials, |config| {
        config.tls.min_version = TlsVersion::V1_1;
    })
    .await;
    let stream = old_client.connect(legacy.tls.unwrap()).await.unwrap();
    assert_eq!(stream.ssl().version_str(), "TLSv1.1");
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_dropping_connections() {
    let first = Pki::new("First CA");
    let second = Pki::new("Second CA");
    let credentials = credentials();
    let served = first.server_rsa();
    let gw = start(&first, &credentials, |config| {
        config.tls.certificates = vec![files(&served)];
        config.tls.reload_interval = Duration::from_millis(50);
    })
    .await;
    let trusts = |pki: &Pki| pki.ca_file.clone();
    let (first_ca, second_ca) = (trusts(&first), trusts(&second));
    let client = |ca_file| TlsClient {
        ca_file: Some(ca_file),
        ..TlsClient::default()
    };
    let mut cp = gw
        .connect_tls(
            "CP-2",
            "ocpp1.6",
            Some(basic_authorization("CP-2", PASSWORD)),
            &client(&first_ca),
        )
        .await
        .unwrap();

    let renewed = second.server_rsa();
    std::fs::copy(&renewed.certificate_file, &served.certificate_file).unwrap();
    std::fs::copy(&renewed.key_file, &served.key_file).unwrap();
    gw.wait_for_series("ocppgw_tls_reloads_total{result=\"ok\"}", 1.0)
        .await;
    client(&second_ca)
        .connect(gw.tls.unwrap())
        .await
        .expect("the renewed certificate is served");
    assert!(client(&first_ca).connect(gw.tls.unwrap()).await.is_err());
    heartbeat(&mut cp).await;
}

#[tokio::test]
async fn a_certificate_bound_to_a_serial_number_must_match_the_boot_notification() {
    use charge_point_gateway::config::CertificateBinding;

    let pki = Pki::new("Charging CA");
    let credentials = credentials();
    let gw = start(&pki, &credentials, |config| {
        config.tls.client_certificate_binding = CertificateBinding::SerialNumber;
    })
    .await;
    let certificate = pki.client("SN-0042", None, Validity::Current);
    let client = TlsClient {
        ca_file: Some(&pki.ca_file),
        certificate: Some(&certificate),
        ..TlsClient::default()
    };
    let boot_201 = |serial: &str| {
        json!({
            "reason": "PowerUp",
            "chargingStation": {"model": "One", "vendorName": "Acme", "serialNumber": serial}
        })
    };

    let mut cp = gw
        .connect_tls("CP-3", "ocpp2.0.1", None, &client)
        .await
        .unwrap();
    let reply = cp.call("b1", "BootNotification", boot_201("SN-0042")).await;
    assert_eq!(reply[0], 3, "{reply}");

    let mut cp = gw
        .connect_tls("CP-3", "ocpp2.0.1", None, &client)
        .await
        .unwrap();
    cp.send_json(json!([2, "b2", "BootNotification", boot_201("SN-9999")]))
        .await;
    let (code, _) = cp.closed().await;
    assert_eq!(code, 1008);
    gw.wait_for_event("CP-3", |e| {
        e["type"] == "chargepointgateway.security.certificate_refused"
            && e["data"]["result"] == "serial_number_mismatch"
    })
    .await;
    // Counted once the session has ended, just after the close frame went out.
    gw.wait_for_series(
        "ocppgw_disconnects_total{reason=\"serial_number_mismatch\"}",
        1.0,
    )
    .await;

    // 1.6 names it chargePointSerialNumber; a BootNotification without one is a mismatch.
    let mut cp = gw
        .connect_tls("CP-3", "ocpp1.6", None, &client)
        .await
        .unwrap();
    let boot_16 = json!({"chargePointVendor": "Acme", "chargePointModel": "One", "chargePointSerialNumber": "SN-0042"});
    assert_eq!(cp.call("b3", "BootNotification", boot_16).await[0], 3);
    let mut cp = gw
        .connect_tls("CP-3", "ocpp1.6", None, &client)
        .await
        .unwrap();
    cp.send_json(json!([2, "b4", "BootNotification", {"chargePointVendor": "Acme", "chargePointModel": "One"}]))
        .await;
    assert_eq!(cp.closed().await.0, 1008);
}

#[tokio::test]
async fn the_admin_api_serves_https_when_given_a_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = Pki::new("Admin CA");
    let server = pki.server_ecdsa();
    let gw = TestGateway::start_with(move |config| {
        config.admin.tls_certificate_file = Some(server.certificate_file);
        config.admin.tls_key_file = Some(server.key_file);
    })
    .await;
    let client = TlsClient {
        ca_file: Some(&pki.ca_file),
        ..TlsClient::default()
    };
    let mut stream = client.connect(gw.admin).await.expect("HTTPS");
    stream
        .write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(STEP, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"status":"ok"}"#), "{response}");
    // Plain HTTP gets no answer on the HTTPS port.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}/livez", gw.admin))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
}
