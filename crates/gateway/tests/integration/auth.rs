//! Charge point authentication on the plain listener (security profiles 0 and 1): Basic
//! credentials against a credentials file, the refusals, backoff, the admin API's
//! credential endpoints, reload of the file, and password rotation in 1.6 and 2.0.1.

use gateway_testkit as common;

use std::{io::Write, path::Path, time::Duration};

use charge_point_gateway::{
    auth::{password::PasswordHashString, UnknownChargePoints},
    Config,
};
use common::{basic_authorization, boot_payload, Cp, TestGateway, STEP};
use reqwest::Method;
use serde_json::{json, Value};
use tempfile::NamedTempFile;

const PASSWORD: &[u8] = b"correct-horse-battery";

fn record(id: &str, profile: u8, password: Option<&[u8]>) -> String {
    let mut line = json!({ "id": id, "profile": profile });
    if let Some(password) = password {
        line["password_hash"] = json!(PasswordHashString::hash(password).unwrap().as_str());
    }
    format!("{line}\n")
}

fn credentials_file(lines: &[String]) -> NamedTempFile {
    let mut file = NamedTempFile::new().unwrap();
    for line in lines {
        file.write_all(line.as_bytes()).unwrap();
    }
    file
}

async fn start(file: &Path, adjust: impl FnOnce(&mut Config)) -> TestGateway {
    let file = file.to_owned();
    TestGateway::start_with(move |config| {
        config.auth.credentials_file = Some(file);
        // Refusals in these tests must not be answered by the backoff instead.
        config.auth.failure_backoff_initial = Duration::ZERO;
        config.auth.failure_backoff_max = Duration::ZERO;
        adjust(config);
    })
    .await
}

async fn boots(cp: &mut Cp) {
    let reply = cp
        .call("b1", "BootNotification", boot_payload("ocpp1.6"))
        .await;
    assert_eq!(reply[0], 3, "{reply}");
}

#[tokio::test]
async fn profile_1_lets_in_the_right_password_and_refuses_everything_else_alike() {
    let file = credentials_file(&[
        record("CP-1", 1, Some(PASSWORD)),
        record("CP-2", 2, Some(PASSWORD)),
    ]);
    let gw = start(file.path(), |_| {}).await;

    let mut cp = gw
        .connect_basic("CP-1", "CP-1", PASSWORD)
        .await
        .expect("accepted");
    boots(&mut cp).await;

    let refusals = [
        (
            "CP-1",
            Some(basic_authorization("CP-1", b"wrong-password-123")),
            "1",
            "wrong_password",
        ),
        ("CP-1", None, "1", "missing_credentials"),
        (
            "CP-1",
            Some("Bearer abc".to_owned()),
            "1",
            "malformed_credentials",
        ),
        (
            "CP-1",
            Some(basic_authorization("CP-9", PASSWORD)),
            "1",
            "username_mismatch",
        ),
        (
            "CP-404",
            Some(basic_authorization("CP-404", PASSWORD)),
            "0",
            "no_record",
        ),
        // Profile 2 needs TLS: refused on the plain listener even with the right password.
        (
            "CP-2",
            Some(basic_authorization("CP-2", PASSWORD)),
            "2",
            "profile_not_offered",
        ),
    ];
    let mut bodies = Vec::new();
    for (id, authorization, profile, result) in refusals {
        let before = gw.auth_results(profile, result).await;
        let (status, headers) = gw
            .connect_with_authorization(id, "ocpp1.6", authorization)
            .await
            .err()
            .expect("refused");
        assert_eq!(status, 401, "{id} {result}");
        assert_eq!(
            headers["www-authenticate"], "Basic realm=\"OCPP\", charset=\"UTF-8\"",
            "{result}"
        );
        bodies.push(headers.get("content-length").cloned());
        assert_eq!(
            gw.auth_results(profile, result).await,
            before + 1.0,
            "{result}"
        );
    }
    // One answer for every reason: nothing tells an unknown id from a wrong password.
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "{bodies:?}");

    // The connected charge point was not disturbed by any of it.
    let reply = cp.call("h1", "Heartbeat", json!({})).await;
    assert_eq!(reply[0], 3, "{reply}");
    assert_eq!(gw.auth_results("1", "accepted").await, 1.0);

    let failed = gw
        .wait_for_event("CP-1", |e| {
            e["type"] == "chargepointgateway.security.auth_failed"
                && e["data"]["result"] == "wrong_password"
        })
        .await;
    assert_eq!(failed["data"]["requiredProfile"], 1);
    assert_eq!(failed["data"]["peerAddress"], "127.0.0.1");
    let text = failed.to_string();
    assert!(!text.contains("wrong-password-123"), "{text}");
    gw.wait_for_event("CP-2", |e| {
        e["type"] == "chargepointgateway.security.downgrade_attempt"
    })
    .await;
    assert!(
        gw.sample("ocppgw_security_events_total{kind=\"downgrade_attempt\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn repeated_failures_back_off_with_429_until_the_wait_is_over() {
    let file = credentials_file(&[record("CP-1", 1, Some(PASSWORD))]);
    let gw = start(file.path(), |config| {
        config.auth.failure_backoff_initial = Duration::from_secs(30);
        config.auth.failure_backoff_max = Duration::from_secs(60);
    })
    .await;
    let (status, _) = gw
        .connect_basic("CP-1", "CP-1", b"wrong-password-123")
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    // Now even the right password is not checked from this address until the wait ends.
    let (status, headers) = gw
        .connect_basic("CP-1", "CP-1", PASSWORD)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 429);
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(gw.auth_results("0", "backoff").await, 1.0);
    // Another charge point from the same address is not held back by CP-1's failures.
    let file_record = record("CP-2", 1, Some(PASSWORD));
    let (status, _) = gw
        .admin_request(
            Method::PUT,
            "/api/v1/charge-points/CP-2/credentials",
            Some(json!({"profile": 1, "password": "correct-horse-battery"})),
        )
        .await;
    assert_eq!(status, 200, "{file_record}");
    gw.connect_basic("CP-2", "CP-2", PASSWORD)
        .await
        .expect("accepted");
}

#[tokio::test]
async fn unknown_ids_may_be_let_in_unsecured_while_known_ones_still_need_their_password() {
    let file = credentials_file(&[record("CP-1", 1, Some(PASSWORD))]);
    let gw = start(file.path(), |config| {
        config.auth.unknown_charge_points = UnknownChargePoints::Unsecured;
    })
    .await;
    gw.connect_with_authorization("CP-new", "ocpp1.6", None)
        .await
        .expect("an unknown id is profile 0");
    let (status, _) = gw
        .connect_with_authorization("CP-1", "ocpp1.6", None)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn without_a_credentials_file_every_charge_point_is_profile_0() {
    let gw = TestGateway::start().await;
    gw.connect_with_authorization("CP-1", "ocpp1.6", None)
        .await
        .expect("accepted");
    assert_eq!(gw.auth_results("0", "accepted").await, 1.0);
    let (status, body) = gw.get("/api/v1/charge-points/CP-1/credentials").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("auth.credentials_file"));
}

#[tokio::test]
async fn the_admin_api_sets_reads_and_deletes_credentials_without_showing_secrets() {
    let file = credentials_file(&[]);
    let gw = start(file.path(), |_| {}).await;
    let path = "/api/v1/charge-points/CP-7/credentials";

    for (body, expected) in [
        (json!({"profile": 1}), "needs a `password_hash`"),
        (json!({"profile": 1, "password": "short"}), "16 to 40 bytes"),
        (
            json!({"profile": 5, "password": "correct-horse-battery"}),
            "0, 1, 2 or 3",
        ),
        (json!({"profile": 1, "passwordHash": "hunter2"}), "PHC"),
        (
            json!({"profile": 1, "password": "correct-horse-battery", "passwordHash": "x"}),
            "not both",
        ),
        (json!({"profile": 1, "pasword": "x"}), "unknown field"),
    ] {
        let (status, reply) = gw
            .admin_request(Method::PUT, path, Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(expected),
            "{body}: {reply}"
        );
    }
    let (status, reply) = gw
        .admin_request(
            Method::PUT,
            "/api/v1/charge-points/bad%20id/credentials",
            Some(json!({"profile": 0})),
        )
        .await;
    assert_eq!(status, 400, "{reply}");

    let (status, reply) = gw
        .admin_request(
            Method::PUT,
            path,
            Some(json!({"profile": 1, "password": "correct-horse-battery"})),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        json!({"chargePointId": "CP-7", "profile": 1, "passwordSet": true, "previousPasswordValidUntil": null})
    );
    let (status, got) = gw.get(path).await;
    assert_eq!((status, &got), (200, &reply));
    let stored = std::fs::read_to_string(file.path()).unwrap();
    assert!(
        stored.contains("$argon2id$") && !stored.contains("correct-horse-battery"),
        "{stored}"
    );
    gw.connect_basic("CP-7", "CP-7", PASSWORD)
        .await
        .expect("accepted");

    // A hash made elsewhere is taken as it is.
    let hash = PasswordHashString::hash(b"another-password-99").unwrap();
    let (status, _) = gw
        .admin_request(
            Method::PUT,
            path,
            Some(json!({"profile": 1, "passwordHash": hash.as_str()})),
        )
        .await;
    assert_eq!(status, 200);
    gw.connect_basic("CP-7", "CP-7", b"another-password-99")
        .await
        .expect("accepted");
    let (status, _) = gw
        .connect_basic("CP-7", "CP-7", PASSWORD)
        .await
        .err()
        .unwrap();
    assert_eq!(
        status, 401,
        "the replaced password no longer works, cache or not"
    );

    let (status, _) = gw.admin_request(Method::DELETE, path, None).await;
    assert_eq!(status, 204);
    let (status, _) = gw.admin_request(Method::DELETE, path, None).await;
    assert_eq!(status, 404);
    let (status, _) = gw
        .connect_basic("CP-7", "CP-7", b"another-password-99")
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_edited_credentials_file_is_read_again_without_dropping_connections() {
    let file = credentials_file(&[record("CP-1", 1, Some(PASSWORD))]);
    let gw = start(file.path(), |config| {
        config.auth.reload_interval = Duration::from_millis(50);
    })
    .await;
    let mut cp = gw
        .connect_basic("CP-1", "CP-1", PASSWORD)
        .await
        .expect("accepted");
    let (status, _) = gw
        .connect_basic("CP-2", "CP-2", PASSWORD)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);

    replace_file(file.path(), record("CP-2", 1, Some(PASSWORD)));
    gw.wait_for_series("ocppgw_credential_reloads_total{result=\"ok\"}", 1.0)
        .await;
    gw.connect_basic("CP-2", "CP-2", PASSWORD)
        .await
        .expect("accepted after the reload");
    // CP-1's record is gone, but its open connection stays.
    let reply = cp.call("h1", "Heartbeat", json!({})).await;
    assert_eq!(reply[0], 3, "{reply}");

    // A broken file keeps the records in force, and says so in a metric.
    replace_file(file.path(), "{broken\n".to_owned());
    gw.wait_for_series("ocppgw_credential_reloads_total{result=\"error\"}", 1.0)
        .await;
    gw.connect_basic("CP-2", "CP-2", PASSWORD)
        .await
        .expect("still accepted");
    assert_eq!(gw.sample("ocppgw_credential_records").await, Some(1.0));
}

/// Replaces the file's content the way editors and deploy tools do: written beside it,
/// then renamed over it. A plain write truncates first, and a reload that reads the
/// empty file in between would take it for a file without records.
fn replace_file(path: &std::path::Path, content: String) {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, content).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

/// The charge point's side of a rotation: reads the CALL, answers `status`, and returns
/// the new password it carried.
async fn answer_rotation(cp: &mut Cp, version: &str, status: &str) -> Vec<u8> {
    let call = cp.frame().await;
    assert_eq!(call[0], 2, "{call}");
    let (password, reply) = match version {
        "ocpp1.6" => {
            assert_eq!(call[2], "ChangeConfiguration");
            assert_eq!(call[3]["key"], "AuthorizationKey");
            let hex = call[3]["value"].as_str().unwrap();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (bytes, json!({ "status": status }))
        }
        _ => {
            assert_eq!(call[2], "SetVariables");
            let data = &call[3]["setVariableData"][0];
            assert_eq!(data["component"]["name"], "SecurityCtrlr");
            assert_eq!(data["variable"]["name"], "BasicAuthPassword");
            let password = data["attributeValue"].as_str().unwrap().as_bytes().to_vec();
            (
                password,
                json!({ "setVariableResult": [{
                    "attributeStatus": status,
                    "component": { "name": "SecurityCtrlr" },
                    "variable": { "name": "BasicAuthPassword" },
                }]}),
            )
        }
    };
    cp.send_json(json!([3, call[1], reply])).await;
    password
}

/// Asks the gateway to rotate CP-1's password, in the background (the charge point must
/// answer before the request ends): the status and the body's text.
fn rotate_in_background(gw: &TestGateway) -> tokio::task::JoinHandle<(u16, String)> {
    let url = format!(
        "http://{}/api/v1/charge-points/CP-1/credentials/rotate",
        gw.admin
    );
    tokio::spawn(async move {
        let response = reqwest::Client::new().post(url).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

async fn rotation_end_to_end(version: &str, expected_length: usize) {
    let file = credentials_file(&[record("CP-1", 1, Some(PASSWORD))]);
    let gw = start(file.path(), |_| {}).await;
    let mut cp = gw
        .connect_with_authorization("CP-1", version, Some(basic_authorization("CP-1", PASSWORD)))
        .await
        .expect("accepted");

    // Refused: the old password stays, the one the charge point was sent never works.
    let request = rotate_in_background(&gw);
    let refused_password = answer_rotation(&mut cp, version, "Rejected").await;
    let (status, text) = request.await.unwrap();
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (status, reply["result"].as_str()),
        (409, Some("refused")),
        "{reply}"
    );
    let (status, _) = gw
        .connect_with_authorization(
            "CP-1",
            version,
            Some(basic_authorization("CP-1", &refused_password)),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    gw.connect_with_authorization("CP-1", version, Some(basic_authorization("CP-1", PASSWORD)))
        .await
        .expect("the old password still works");
    let mut cp = gw
        .connect_with_authorization("CP-1", version, Some(basic_authorization("CP-1", PASSWORD)))
        .await
        .expect("accepted");

    // Accepted: the response carries no password; the new one works, and once used, the
    // old one stops working.
    let request = rotate_in_background(&gw);
    let new_password = answer_rotation(&mut cp, version, "Accepted").await;
    assert_eq!(new_password.len(), expected_length);
    let (status, text) = request.await.unwrap();
    assert_eq!(status, 200, "{text}");
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["result"], "accepted");
    assert!(
        !text.contains(std::str::from_utf8(&new_password).unwrap()),
        "{text}"
    );
    let stored = std::fs::read_to_string(file.path()).unwrap();
    assert!(!stored.contains(std::str::from_utf8(&new_password).unwrap()));

    // Until the charge point uses the new password, both work.
    let (_, record) = gw.get("/api/v1/charge-points/CP-1/credentials").await;
    assert!(record["previousPasswordValidUntil"].is_string(), "{record}");
    gw.connect_with_authorization(
        "CP-1",
        version,
        Some(basic_authorization("CP-1", &new_password)),
    )
    .await
    .expect("the new password works");
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (_, record) = gw.get("/api/v1/charge-points/CP-1/credentials").await;
        if record["previousPasswordValidUntil"].is_null() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "previous password never retired: {record}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = gw
        .connect_with_authorization("CP-1", version, Some(basic_authorization("CP-1", PASSWORD)))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401, "the old password stopped working");
    gw.wait_for_event("CP-1", |e| {
        e["type"] == "chargepointgateway.security.credentials_rotated"
            && e["data"]["result"] == "accepted"
    })
    .await;
    assert_eq!(
        gw.sample("ocppgw_security_events_total{kind=\"credentials_rotated\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn rotation_in_1_6_sends_a_hex_authorization_key_and_retires_the_old_password() {
    rotation_end_to_end("ocpp1.6", 20).await;
}

#[tokio::test]
async fn rotation_in_2_0_1_sets_basic_auth_password_and_retires_the_old_password() {
    rotation_end_to_end("ocpp2.0.1", 40).await;
}

#[tokio::test]
async fn rotation_needs_a_connected_charge_point_with_a_password_profile() {
    let file = credentials_file(&[record("CP-0", 0, None), record("CP-1", 1, Some(PASSWORD))]);
    let gw = start(file.path(), |_| {}).await;
    let (status, reply) = gw
        .post("/api/v1/charge-points/CP-1/credentials/rotate", json!({}))
        .await;
    assert_eq!(status, 404, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("not connected"));
    let (status, reply) = gw
        .post("/api/v1/charge-points/CP-0/credentials/rotate", json!({}))
        .await;
    assert_eq!(status, 409, "{reply}");
    let (status, _) = gw
        .post("/api/v1/charge-points/CP-9/credentials/rotate", json!({}))
        .await;
    assert_eq!(status, 404);
}
