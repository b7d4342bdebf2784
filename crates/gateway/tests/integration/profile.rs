//! `GET /api/v1/debug/profile`: off unless enabled, bounded, one at a time, behind the
//! admin token, and answering a flame graph or collapsed stacks of the gateway's CPU.

use gateway_testkit as common;

use common::TestGateway;
use serde_json::json;

#[tokio::test]
async fn profiling_is_off_unless_enabled() {
    let gw = TestGateway::start().await;
    let (status, body) = gw.get("/api/v1/debug/profile?seconds=1").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("admin.profiling"));
}

#[tokio::test]
async fn a_profile_of_a_busy_gateway_names_its_functions() {
    let gw = TestGateway::start_with(|c| {
        c.admin.profiling = true;
        c.admin.max_profile_seconds = 5;
    })
    .await;
    for bad in [
        "seconds=0",
        "seconds=6",
        "seconds=x",
        "seconds=1&format=pprof",
    ] {
        let (status, body) = gw.get(&format!("/api/v1/debug/profile?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Work to sample: a charge point sending CALLs as fast as they are answered.
    let mut cp = gw.connect("CP-1", &["ocpp1.6"]).await;
    let busy = tokio::spawn(async move {
        for n in 0.. {
            let reply = cp.call(&format!("h{n}"), "Heartbeat", json!({})).await;
            assert_eq!(reply[0], 3);
        }
    });
    let http = reqwest::Client::new();
    let url = format!(
        "http://{}/api/v1/debug/profile?seconds=2&format=collapsed",
        gw.admin
    );
    let first = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(url).send().await.unwrap() }
    });
    // One profile at a time: a second one while the first samples is refused.
    let deadline = tokio::time::Instant::now() + common::STEP;
    loop {
        let second = http.get(&url).send().await.unwrap();
        if second.status() == 409 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never refused while sampling"
        );
    }
    let response = first.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    for line in text.lines() {
        let (stack, count) = line.rsplit_once(' ').unwrap();
        assert!(count.parse::<u64>().unwrap() > 0, "{line}");
        assert!(!stack.is_empty());
    }
    assert!(
        text.contains("charge_point_gateway"),
        "the gateway's own functions are sampled: {}",
        &text[..text.len().min(2000)]
    );

    let svg = http
        .get(format!(
            "http://{}/api/v1/debug/profile?seconds=1",
            gw.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.status(), 200);
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert!(svg.text().await.unwrap().contains("<svg"));
    busy.abort();
}

#[tokio::test]
async fn profiling_needs_the_admin_token() {
    let gw = TestGateway::start_with(|c| {
        c.admin.profiling = true;
        c.admin.api_token = Some("profile-token-0123456789".into());
    })
    .await;
    let (status, _) = gw.get("/api/v1/debug/profile?seconds=1").await;
    assert_eq!(status, 401);
}
