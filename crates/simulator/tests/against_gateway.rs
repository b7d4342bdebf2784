//! The simulator against the real gateway on 127.0.0.1:0. The gateway validates every
//! frame against the OCA schemas, so a run without CALLERRORs shows that what the simulator
//! says is valid OCPP in every version, and a `completed` command that its answers are too.

use std::time::Duration;

use charge_point_simulator::{
    behaviour::{Rate, Scenario},
    charge_point::{Backoff, Profile},
    connect::{Connector, TlsOptions},
    load::{self, LoadOptions, Summary},
    payloads::Identity,
    session::{self, SessionOptions},
    version,
};
use ocpp::OcppVersion;
use serde_json::{json, Value};

/// Bound on every wait.
const STEP: Duration = Duration::from_secs(10);

/// The gateway of the shared test harness, with what these tests ask of it.
struct TestGateway {
    gateway: gateway_testkit::TestGateway,
    url: String,
}

impl TestGateway {
    async fn start() -> TestGateway {
        let gateway = gateway_testkit::TestGateway::start_with(|config| {
            config.shutdown.drain_time = Duration::from_millis(100);
        })
        .await;
        let url = format!("ws://{}/ocpp", gateway.ocpp);
        TestGateway { gateway, url }
    }

    /// Waits until `count` charge points are connected (the registry is the gateway's own
    /// record of them).
    async fn wait_connected(&self, count: usize) {
        tokio::time::timeout(STEP, async {
            while self.gateway.probe.connections() < count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("charge points connect in time");
    }

    async fn command(&self, id: &str, action: &str, payload: Value) -> Value {
        let body = json!({ "action": action, "payload": payload, "timeoutSeconds": 5 });
        let path = format!("/api/v1/charge-points/{id}/commands");
        self.gateway.post(&path, body).await.1
    }

    async fn connection(&self, id: &str) -> Value {
        self.gateway
            .get(&format!("/api/v1/connections/{id}"))
            .await
            .1
    }
}

fn connector(url: &str, sources: Vec<std::net::IpAddr>) -> Connector {
    Connector::new(url, &TlsOptions::default(), None, sources, STEP).expect("valid URL")
}

fn profile(scenario: Scenario, rate: Rate) -> Profile {
    Profile {
        scenario,
        rate,
        heartbeat_interval: None,
        connectors: 2,
        meter_values_per_transaction: 2,
        call_timeout: STEP,
        backoff: Backoff {
            minimum: Duration::from_millis(50),
            maximum: Duration::from_secs(1),
            jitter: Duration::from_millis(200),
        },
        echo_baseline: false,
        identity: Identity::default(),
    }
}

fn options(charge_points: usize, profile: Profile, duration: Duration) -> LoadOptions {
    LoadOptions {
        charge_points,
        id_prefix: "T-".into(),
        first_number: 1,
        mix: "1.6=1,2.0.1=1,2.1=1".parse().unwrap(),
        ramp_rate: 0.0,
        duration,
        warmup: Duration::ZERO,
        storm_after: None,
        boot_grace: Duration::from_millis(200),
        progress_every: None,
        // The gateway runs in this process: the figures are both sides together.
        server_pid: Some(std::process::id()),
        profile,
    }
}

fn assert_clean(summary: &Summary) {
    assert!(summary.errors.is_empty(), "errors: {:?}", summary.errors);
    assert!(summary.is_clean());
    assert_eq!(summary.window.call_errors, 0);
    assert_eq!(summary.window.call_timeouts, 0);
}

#[tokio::test]
async fn a_mixed_fleet_charges_in_every_version_without_a_single_error() {
    let gateway = TestGateway::start().await;
    let summary = load::run(
        connector(&gateway.url, vec![]),
        options(
            9,
            profile(Scenario::Charging, Rate::PerSecond(40.0)),
            Duration::from_millis(1500),
        ),
        std::io::sink(),
    )
    .await;
    assert_clean(&summary);
    assert!(summary.all_booted_after_s.is_some());
    // Nine charge points at 40/s for 1.5 s: many whole charging sessions, each of which
    // runs Authorize, the transaction messages of its version and StatusNotifications.
    assert!(
        summary.window.calls_answered > 200,
        "only {} answered",
        summary.window.calls_answered
    );
    assert!(summary.latency_ms.count > 200);
    assert!(summary.latency_ms.p50 > 0.0 && summary.latency_ms.p50 <= summary.latency_ms.p99);
    // Both sides did work in the window, and per CALL it is a few microseconds to a few
    // milliseconds (an unoptimised build).
    let cpu = &summary.cpu;
    assert!(cpu.simulator_share.is_some_and(|s| s > 0.0), "{cpu:?}");
    assert!(
        cpu.server_us_per_call
            .is_some_and(|us| us > 0.1 && us < 100_000.0),
        "{cpu:?}"
    );
}

#[tokio::test]
async fn the_closed_loop_telemetry_scenario_counts_every_answer() {
    let gateway = TestGateway::start().await;
    let summary = load::run(
        connector(&gateway.url, vec![]),
        options(
            6,
            profile(Scenario::Telemetry, Rate::Max),
            Duration::from_millis(500),
        ),
        std::io::sink(),
    )
    .await;
    assert_clean(&summary);
    assert_eq!(summary.rate_per_charge_point, "max");
    // Closed loop: at most one CALL per charge point is unanswered when the window closes.
    let w = &summary.window;
    assert!(w.calls_sent >= w.calls_answered && w.calls_sent - w.calls_answered <= 6);
    assert!(w.answered_per_s > 100.0, "{w:?}");
}

#[tokio::test]
async fn simulated_charge_points_answer_commands_validly_in_every_version() {
    let gateway = TestGateway::start().await;
    let run = tokio::spawn(load::run(
        connector(&gateway.url, vec![]),
        options(
            3,
            profile(Scenario::Idle, Rate::Max),
            Duration::from_secs(4),
        ),
        std::io::sink(),
    ));
    gateway.wait_connected(3).await;
    // T-000001 is 1.6, T-000002 2.0.1, T-000003 2.1 (the mix deals versions in turn).
    let get = gateway
        .command(
            "T-000001",
            "GetConfiguration",
            json!({"key": ["HeartbeatInterval", "Nope"]}),
        )
        .await;
    assert_eq!(get["status"], "completed", "{get}");
    assert_eq!(get["response"]["configurationKey"][0]["value"], "300");
    assert_eq!(get["response"]["unknownKey"], json!(["Nope"]));
    let change = gateway
        .command(
            "T-000001",
            "ChangeConfiguration",
            json!({"key": "HeartbeatInterval", "value": "60"}),
        )
        .await;
    assert_eq!(change["response"]["status"], "Accepted", "{change}");
    let start = gateway
        .command(
            "T-000001",
            "RemoteStartTransaction",
            json!({"idTag": "REMOTE-1", "connectorId": 1}),
        )
        .await;
    assert_eq!(start["response"]["status"], "Accepted", "{start}");
    let trigger = gateway
        .command(
            "T-000001",
            "TriggerMessage",
            json!({"requestedMessage": "Heartbeat"}),
        )
        .await;
    assert_eq!(trigger["response"]["status"], "Accepted", "{trigger}");

    for id in ["T-000002", "T-000003"] {
        let variable = json!({"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}});
        let set = gateway
            .command(id, "SetVariables", json!({"setVariableData": [{"attributeValue": "120", "component": variable["component"], "variable": variable["variable"]}]}))
            .await;
        assert_eq!(
            set["response"]["setVariableResult"][0]["attributeStatus"], "Accepted",
            "{set}"
        );
        let get = gateway
            .command(id, "GetVariables", json!({"getVariableData": [variable]}))
            .await;
        assert_eq!(
            get["response"]["getVariableResult"][0]["attributeValue"], "120",
            "{get}"
        );
        let start = gateway
            .command(id, "RequestStartTransaction", json!({"idToken": {"idToken": "REMOTE-2", "type": "ISO14443"}, "remoteStartId": 7, "evseId": 1}))
            .await;
        assert_eq!(start["response"]["status"], "Accepted", "{start}");
        let unknown = gateway
            .command(id, "ClearDisplayMessage", json!({"id": 1}))
            .await;
        assert_eq!(unknown["status"], "callError", "{unknown}");
        assert_eq!(unknown["error"]["code"], "NotImplemented");
        assert_eq!(unknown["error"]["origin"], "chargePoint");
    }

    // A reset reboots: the charge point reconnects and boots again.
    let reset = gateway
        .command("T-000003", "Reset", json!({"type": "Immediate"}))
        .await;
    assert_eq!(reset["response"]["status"], "Accepted", "{reset}");
    let summary = run.await.expect("the load runs to its end");
    assert!(summary.run.connects >= 4, "{:?}", summary.run);
    assert_eq!(summary.run.server_calls, 13);
    assert!(summary.errors.is_empty(), "errors: {:?}", summary.errors);
}

#[tokio::test]
async fn a_reconnect_storm_brings_every_charge_point_back() {
    let gateway = TestGateway::start().await;
    let mut options = options(
        12,
        profile(Scenario::Idle, Rate::Max),
        Duration::from_secs(4),
    );
    options.storm_after = Some(Duration::from_millis(300));
    let summary = load::run(connector(&gateway.url, vec![]), options, std::io::sink()).await;
    let storm = summary.storm.expect("a storm was ordered");
    assert_eq!(storm.dropped, 12);
    let recovered = storm
        .recovered_after_s
        .expect("every charge point booted again");
    assert!(recovered < 4.0);
    assert_eq!(summary.run.connects, 24, "{:?}", summary.run);
}

#[tokio::test]
async fn charge_points_connect_from_the_given_source_addresses() {
    let gateway = TestGateway::start().await;
    let sources = vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
    let run = tokio::spawn(load::run(
        connector(&gateway.url, sources),
        options(
            2,
            profile(Scenario::Idle, Rate::Max),
            Duration::from_secs(1),
        ),
        std::io::sink(),
    ));
    gateway.wait_connected(2).await;
    for (id, source) in [("T-000001", "127.0.0.2:"), ("T-000002", "127.0.0.3:")] {
        let connection = gateway.connection(id).await;
        let peer = connection["peerAddress"].as_str().unwrap_or_default();
        assert!(peer.starts_with(source), "{id} came from {peer}");
    }
    assert_clean(&run.await.unwrap());
}

#[tokio::test]
async fn the_scripted_session_runs_a_whole_charging_session_in_every_version() {
    let gateway = TestGateway::start().await;
    for version in OcppVersion::ALL {
        let options = SessionOptions {
            id: format!("S-{}", version::number(version)),
            version,
            script: None,
            stay: false,
            call_timeout: STEP,
            meter_values: 2,
            identity: Identity::default(),
        };
        let mut out = Vec::new();
        let report = session::run(&connector(&gateway.url, vec![]), &options, &mut out)
            .await
            .expect("session runs");
        let printed = String::from_utf8(out).unwrap();
        assert_eq!(report.failed, 0, "{printed}");
        assert_eq!(report.sent, report.answered);
        // Boot, status, heartbeat, plug, authorize, start, two meter values, stop, unplug.
        assert!(report.sent >= 10, "{printed}");
        let stop = if version == OcppVersion::V16 {
            "StopTransaction"
        } else {
            "\"Ended\""
        };
        assert!(printed.contains(stop), "{printed}");
    }
}

#[tokio::test]
async fn a_script_file_replaces_the_charging_session() {
    let gateway = TestGateway::start().await;
    let dir = std::env::temp_dir().join(format!("cpsim-script-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.jsonl");
    std::fs::write(
        &script,
        "# two heartbeats and a DataTransfer\n[\"Heartbeat\", {}]\n\n[\"Heartbeat\", {}]\n[\"DataTransfer\", {\"vendorId\": \"acme\"}]\n",
    )
    .unwrap();
    let options = SessionOptions {
        id: "S-SCRIPT".into(),
        version: OcppVersion::V16,
        script: Some(session::read_script(&script).expect("script parses")),
        stay: false,
        call_timeout: STEP,
        meter_values: 1,
        identity: Identity::default(),
    };
    let mut out = Vec::new();
    let report = session::run(&connector(&gateway.url, vec![]), &options, &mut out)
        .await
        .expect("session runs");
    // Boot and the one connector's StatusNotification, then the script's three.
    assert_eq!(report.sent, 5, "{}", String::from_utf8_lossy(&out));
    assert_eq!(report.failed, 0);

    std::fs::write(&script, "[\"Heartbeat\"]\n").unwrap();
    let error = session::read_script(&script).expect_err("a line without a payload is refused");
    assert!(error.to_string().contains("line 1"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_run_against_nothing_counts_refusals_and_is_not_clean() {
    // Bind then drop: nothing listens on the port afterwards.
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let summary = load::run(
        connector(&format!("ws://127.0.0.1:{port}/ocpp"), vec![]),
        options(
            3,
            profile(Scenario::Idle, Rate::Max),
            Duration::from_millis(200),
        ),
        std::io::sink(),
    )
    .await;
    assert!(!summary.is_clean());
    assert_eq!(summary.all_booted_after_s, None);
    assert!(
        summary.errors["connect_refused"] >= 3,
        "{:?}",
        summary.errors
    );
}

/// The simulator's `wss://`, `--ca-file`, client certificate and Basic options against the
/// gateway's TLS listener: profile 2 (TLS and a password) and profile 3 (a client
/// certificate whose CN is the id), and a wrong password refused.
#[tokio::test]
async fn the_simulator_connects_with_security_profiles_2_and_3() {
    use gateway_testkit::pki::{Pki, Validity};
    use std::io::Write;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Pki::new("Charging CA");
    let hash =
        charge_point_gateway::auth::password::PasswordHashString::hash(b"simulator-password-01")
            .unwrap();
    let mut credentials = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        credentials,
        "{}",
        json!({"id": "SIM-2", "profile": 2, "password_hash": hash.as_str()})
    )
    .unwrap();
    writeln!(credentials, "{}", json!({"id": "SIM-3", "profile": 3})).unwrap();
    let server = pki.server_ecdsa();
    let (ca_file, credentials_file) = (pki.ca_file.clone(), credentials.path().to_owned());
    let gateway = gateway_testkit::TestGateway::start_with(move |config| {
        config.tls.certificates = vec![charge_point_gateway::config::CertificateFiles {
            certificate_file: server.certificate_file,
            key_file: server.key_file,
        }];
        config.tls.client_ca_file = Some(ca_file);
        config.auth.credentials_file = Some(credentials_file);
        config.auth.failure_backoff_initial = Duration::ZERO;
        config.auth.failure_backoff_max = Duration::ZERO;
    })
    .await;
    let url = format!("wss://localhost:{}/ocpp", gateway.tls.unwrap().port());
    let connector = |tls: TlsOptions, password: Option<&str>| {
        Connector::new(&url, &tls, password.map(str::to_owned), vec![], STEP).unwrap()
    };
    let trusting = TlsOptions {
        ca_file: Some(pki.ca_file.clone()),
        ..TlsOptions::default()
    };

    let profile_2 = connector(trusting.clone(), Some("simulator-password-01"));
    let first = profile_2
        .connect("SIM-2", OcppVersion::V16, 0)
        .await
        .expect("profile 2 connects");
    drop(first);
    // Reconnecting, the charge point resumes its TLS session.
    let again = profile_2
        .connect("SIM-2", OcppVersion::V16, 0)
        .await
        .expect("profile 2 reconnects");
    drop(again);
    let resumed = "ocppgw_tls_handshakes_total{result=\"resumed\"}";
    assert_eq!(gateway.sample(resumed).await, Some(1.0));
    let without = connector(
        TlsOptions {
            no_resumption: true,
            ..trusting.clone()
        },
        Some("simulator-password-01"),
    );
    for _ in 0..2 {
        drop(without.connect("SIM-2", OcppVersion::V16, 0).await.unwrap());
    }
    assert_eq!(
        gateway.sample(resumed).await,
        Some(1.0),
        "--no-tls-resumption never resumes"
    );
    let _sim2 = profile_2
        .connect("SIM-2", OcppVersion::V16, 0)
        .await
        .expect("profile 2 connects");
    let wrong = connector(trusting.clone(), Some("not-the-password-01"));
    let refused = wrong.connect("SIM-2", OcppVersion::V16, 0).await.err();
    assert!(
        matches!(
            refused,
            Some(charge_point_simulator::connect::ConnectError::Refused(401))
        ),
        "{refused:?}"
    );

    let certificate = pki.client("SIM-3", None, Validity::Current);
    let profile_3 = connector(
        TlsOptions {
            ca_file: Some(pki.ca_file.clone()),
            client_cert: Some(certificate.certificate_file.clone()),
            client_key: Some(certificate.key_file.clone()),
            no_resumption: false,
        },
        None,
    );
    let _sim3 = profile_3
        .connect("SIM-3", OcppVersion::V201, 0)
        .await
        .expect("profile 3 connects");
    tokio::time::timeout(STEP, async {
        while gateway.probe.connections() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both charge points are connected");
}

/// With tickets and the session cache off, a reconnecting charge point does a full
/// handshake every time, however willing it is to resume.
#[tokio::test]
async fn without_tickets_or_cache_the_gateway_resumes_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = gateway_testkit::pki::Pki::new("Charging CA");
    let server = pki.server_ecdsa();
    let gateway = gateway_testkit::TestGateway::start_with(move |config| {
        config.tls.certificates = vec![charge_point_gateway::config::CertificateFiles {
            certificate_file: server.certificate_file,
            key_file: server.key_file,
        }];
        config.tls.session_tickets = false;
        config.tls.session_cache_size = 0;
    })
    .await;
    let url = format!("wss://localhost:{}/ocpp", gateway.tls.unwrap().port());
    let tls = TlsOptions {
        ca_file: Some(pki.ca_file.clone()),
        ..TlsOptions::default()
    };
    let connector = Connector::new(&url, &tls, None, vec![], STEP).unwrap();
    for _ in 0..3 {
        drop(
            connector
                .connect("SIM-0", OcppVersion::V16, 0)
                .await
                .unwrap(),
        );
    }
    let series = |result: &str| format!("ocppgw_tls_handshakes_total{{result=\"{result}\"}}");
    assert_eq!(gateway.sample(&series("full")).await, Some(3.0));
    assert_eq!(gateway.sample(&series("resumed")).await, Some(0.0));
}
