//! Several gateways sharing a registry in a real `redis-server`: claims and takeovers,
//! commands routed to the node that holds the charge point, and what happens while
//! Redis is gone and when it comes back empty.

use std::time::Duration;

use charge_point_gateway::{
    cluster::{
        redis_registry::{Claim, Claimant, RedisRegistry},
        ClusterConfig,
    },
    Config,
};
use gateway_testkit as common;

use common::{redis::RedisServer, TestGateway, STEP};

use crate::process::{free_port, GatewayProcess};
use serde_json::{json, Value};

pub(crate) const TOKEN: &str = "cluster-test-token-0123456789";

fn cluster_config(redis: &RedisServer, node: &str) -> impl FnOnce(&mut Config) {
    cluster_settings(vec![redis.url()], node)
}

/// Node `node` of a test cluster on the Redis at `redis_urls`: short lease and Redis
/// timeout, the internal API on a free port.
pub(crate) fn cluster_settings(redis_urls: Vec<String>, node: &str) -> impl FnOnce(&mut Config) {
    let node = node.to_owned();
    move |config| {
        config.node_id = node;
        config.cluster = ClusterConfig {
            redis_urls,
            lease_time: Duration::from_secs(2),
            redis_timeout: Duration::from_millis(500),
            internal_address: "127.0.0.1:0".parse().unwrap(),
            internal_token: Some(TOKEN.to_owned()),
            ..ClusterConfig::default()
        };
    }
}

async fn node(redis: &RedisServer, name: &str) -> TestGateway {
    let gw = TestGateway::start_with(cluster_config(redis, name)).await;
    // Commands are forwarded only to nodes whose lease is in Redis.
    wait_for_lease(redis, name, STEP).await;
    gw
}

/// Waits until node `name` has written its lease.
async fn wait_for_lease(redis: &RedisServer, name: &str, within: Duration) {
    wait_until(within, || async {
        redis
            .command(&["EXISTS", &format!("cpgw:node:{name}")])
            .await
            .is_ok_and(|reply| reply == "1")
    })
    .await;
}

pub(crate) async fn owner(redis: &RedisServer, id: &str) -> String {
    redis
        .command(&["HGET", &format!("cpgw:cp:{{{id}}}:owner"), "node"])
        .await
        .unwrap()
}

pub(crate) async fn wait_until<F, Fut>(within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in {within:?}"
        );
        // The registry has no notification to await; poll it at a short interval.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn reset() -> Value {
    json!({"action": "Reset", "payload": {"type": "Soft"}})
}

/// Answers the next CALL with Accepted; returns the CALL.
async fn accept_next(cp: &mut common::Cp) -> Value {
    let call = cp.frame().await;
    assert_eq!(call[0], 2, "{call}");
    cp.send_json(json!([3, call[1], {"status": "Accepted"}]))
        .await;
    call
}

#[tokio::test]
async fn a_command_reaches_the_charge_point_through_any_node() {
    let redis = RedisServer::start().await;
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    let mut cp = a.connect("CP-1", &["ocpp1.6"]).await;
    wait_until(STEP, || async { owner(&redis, "CP-1").await == "node-a" }).await;

    // Read by B, delivered by A, answered to B's caller.
    let command = b.command("CP-1", reset());
    let call = accept_next(&mut cp).await;
    assert_eq!(call[2], "Reset");
    let (status, body) = command.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "completed", "response": {"status": "Accepted"}})
    );
    assert!(
        b.sample("ocppgw_cluster_forwards_total{result=\"answered\"}")
            .await
            >= Some(1.0)
    );

    // B validates with the version in the registry before forwarding.
    let (status, body) = b
        .post(
            "/api/v1/charge-points/CP-1/commands",
            json!({"action": "Reset", "payload": {"type": "Sideways"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // Any node describes the connection, naming its owner.
    let (status, body) = b.get("/api/v1/connections/CP-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["gatewayNode"], "node-a");
    assert!(body["epoch"].as_u64().unwrap() > 0);
    let (_, listing) = b.get("/api/v1/connections?scope=cluster").await;
    assert_eq!(listing["total"], 1, "{listing}");
    assert_eq!(listing["connections"][0]["chargePointId"], "CP-1");
    assert_eq!(listing["connections"][0]["gatewayNode"], "node-a");
    let (_, local) = b.get("/api/v1/connections").await;
    assert_eq!(local["total"], 0, "{local}");

    // Not connected anywhere.
    let (status, body) = b.post("/api/v1/charge-points/CP-9/commands", reset()).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["status"], "notConnected");
}

#[tokio::test]
async fn a_charge_point_that_moves_is_taken_over_and_followed() {
    let redis = RedisServer::start().await;
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    let mut old = a.connect("CP-1", &["ocpp1.6"]).await;
    wait_until(STEP, || async { owner(&redis, "CP-1").await == "node-a" }).await;
    let opened_a = a
        .wait_for_event("CP-1", |e| {
            e["type"].as_str().unwrap().ends_with("connection.opened")
        })
        .await;

    let mut new = b.connect("CP-1", &["ocpp1.6"]).await;
    // A is told and closes its connection as replaced.
    let (_, reason) = old.closed().await;
    assert_eq!(reason, "replaced_by_new_connection");
    wait_until(STEP, || async { owner(&redis, "CP-1").await == "node-b" }).await;
    assert_eq!(
        a.sample("ocppgw_cluster_takeovers_lost_total").await,
        Some(1.0)
    );
    assert_eq!(
        b.sample("ocppgw_cluster_claims_total{result=\"took_over\"}")
            .await,
        Some(1.0)
    );

    // A's late close does not release B's claim, and the events tell the order.
    let closed_a = a
        .wait_for_event("CP-1", |e| {
            e["type"].as_str().unwrap().ends_with("connection.closed")
        })
        .await;
    let opened_b = b
        .wait_for_event("CP-1", |e| {
            e["type"].as_str().unwrap().ends_with("connection.opened")
        })
        .await;
    assert_eq!(owner(&redis, "CP-1").await, "node-b");
    assert_eq!(closed_a["data"]["gatewayNode"], "node-a");
    assert_eq!(closed_a["data"]["epoch"], opened_a["data"]["epoch"]);
    assert!(opened_b["data"]["epoch"].as_u64() > closed_a["data"]["epoch"].as_u64());

    // Commands read by A now go to B.
    let command = a.command("CP-1", reset());
    accept_next(&mut new).await;
    let (status, body) = command.await.unwrap();
    assert_eq!(status, 200, "{body}");

    // B's own close releases the record.
    drop(new);
    wait_until(STEP, || async { owner(&redis, "CP-1").await.is_empty() }).await;
}

#[tokio::test]
async fn simultaneous_connections_to_two_nodes_leave_exactly_one() {
    const ROUNDS: usize = 100;
    let redis = RedisServer::start().await;
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    let mut clients = Vec::new();
    for round in 0..ROUNDS {
        let id = format!("CP-{round}");
        let (to_a, to_b) = tokio::join!(
            a.connect_without_reading(&id),
            b.connect_without_reading(&id)
        );
        clients.push((to_a, to_b));
    }
    // Exactly one session per charge point survives, on the node the registry names.
    wait_until(Duration::from_secs(20), || async {
        a.probe.connections() + b.probe.connections() == ROUNDS
    })
    .await;
    let listed = |gw: &TestGateway| {
        let gw_admin = gw.admin;
        async move {
            let body: Value =
                reqwest::get(format!("http://{gw_admin}/api/v1/connections?limit=1000"))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            body["connections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["chargePointId"].as_str().unwrap().to_owned())
                .collect::<std::collections::BTreeSet<_>>()
        }
    };
    let (on_a, on_b) = (listed(&a).await, listed(&b).await);
    assert!(on_a.is_disjoint(&on_b));
    assert_eq!(on_a.len() + on_b.len(), ROUNDS);
    for id in &on_a {
        assert_eq!(owner(&redis, id).await, "node-a", "{id}");
    }
    for id in &on_b {
        assert_eq!(owner(&redis, id).await, "node-b", "{id}");
    }
    drop(clients);
}

#[tokio::test]
async fn a_stale_owner_can_neither_release_nor_overwrite_a_newer_claim() {
    let redis = RedisServer::start().await;
    let config = ClusterConfig {
        redis_urls: vec![redis.url()],
        internal_token: Some(TOKEN.to_owned()),
        ..ClusterConfig::default()
    };
    let registry = RedisRegistry::new(&config).unwrap();
    let claimant = |node| Claimant {
        node,
        incarnation: "i",
        connected_at_ms: 0,
        version: "ocpp1.6",
    };
    let Claim::Taken {
        epoch: first,
        previous: None,
    } = registry.claim("CP", &claimant("a"), None).await.unwrap()
    else {
        panic!("first claim");
    };
    let Claim::Taken {
        epoch: second,
        previous: Some(previous),
    } = registry.claim("CP", &claimant("b"), None).await.unwrap()
    else {
        panic!("second claim");
    };
    assert!(second > first);
    assert_eq!((previous.node.as_str(), previous.epoch), ("a", first));
    assert!(!registry.release("CP", "a", first).await.unwrap());
    // A conditional claim on what A last saw changes nothing.
    assert_eq!(
        registry
            .claim("CP", &claimant("a"), Some(Some(first)))
            .await
            .unwrap(),
        Claim::Changed
    );
    assert_eq!(registry.owner("CP").await.unwrap().unwrap().node, "b");
    assert!(registry.release("CP", "b", second).await.unwrap());
    assert_eq!(registry.owner("CP").await.unwrap(), None);
    // Epochs keep growing after the record is gone, and after Redis loses everything.
    let Claim::Taken { epoch: third, .. } =
        registry.claim("CP", &claimant("a"), None).await.unwrap()
    else {
        panic!("third claim");
    };
    assert!(third > second);
}

#[tokio::test]
async fn redis_down_keeps_serving_and_reconciles_when_it_returns_empty() {
    let mut redis = RedisServer::start().await;
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    let mut held = a.connect("CP-1", &["ocpp1.6"]).await;
    wait_until(STEP, || async { owner(&redis, "CP-1").await == "node-a" }).await;

    redis.kill();
    // A keeps serving the charge point it holds, and accepts new ones.
    let reply = held.call("m1", "Heartbeat", json!({})).await;
    assert_eq!(reply[0], 3, "{reply}");
    let command = a.command("CP-1", reset());
    accept_next(&mut held).await;
    assert_eq!(command.await.unwrap().0, 200);
    let mut joined = a.connect("CP-2", &["ocpp1.6"]).await;
    let reply = joined.call("m1", "Heartbeat", json!({})).await;
    assert_eq!(reply[0], 3, "{reply}");
    // B cannot know where CP-1 is, and says why.
    let (status, body) = b.post("/api/v1/charge-points/CP-1/commands", reset()).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("registry is unavailable"),
        "{body}"
    );
    let (_, health) = a.get("/health").await;
    assert_eq!(
        health["components"]["clusterRegistry"]["status"], "degraded",
        "{health}"
    );
    // Readiness does not drop the fleet because Redis blinked.
    let (ready, _) = a.get("/readyz").await;
    assert_eq!(ready, 200);

    // Redis returns with nothing: A claims both charge points again.
    redis.restart_empty().await;
    wait_until(Duration::from_secs(15), || async {
        owner(&redis, "CP-1").await == "node-a" && owner(&redis, "CP-2").await == "node-a"
    })
    .await;
    let command = b.command("CP-2", reset());
    accept_next(&mut joined).await;
    let (status, body) = command.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (_, health) = a.get("/health").await;
    assert_eq!(
        health["components"]["clusterRegistry"]["status"], "up",
        "{health}"
    );
}

#[tokio::test]
async fn the_internal_api_refuses_callers_without_the_token() {
    let redis = RedisServer::start().await;
    let a = node(&redis, "node-a").await;
    let lease = redis.command(&["GET", "cpgw:node:node-a"]).await.unwrap();
    let lease: Value = serde_json::from_str(&lease).unwrap();
    let url = lease["url"].as_str().unwrap();
    let client = reqwest::Client::new();
    let refused = client
        .post(format!("{url}/internal/v1/charge-points/CP-1/takeover"))
        .json(&json!({"epoch": u64::MAX, "node": "intruder"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let wrong = client
        .get(format!("{url}/internal/v1/connections"))
        .bearer_auth("not-the-token-at-all")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let allowed = client
        .get(format!("{url}/internal/v1/connections"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    drop(a);
}

/// A gateway binary in a process of its own, for what only a process can suffer.
struct NodeProcess {
    process: GatewayProcess,
    ocpp: u16,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    async fn start(redis: &RedisServer, name: &str) -> NodeProcess {
        let dir = tempfile::tempdir().unwrap();
        let (ocpp, admin, internal) = (free_port(), free_port(), free_port());
        let config = format!(
            r#"node_id = "{name}"
[listener]
address = "127.0.0.1:{ocpp}"
[admin]
address = "127.0.0.1:{admin}"
[metrics]
enabled = false
[events]
output = "none"
[log]
level = "warn"
[cluster]
redis_urls = ["{url}"]
lease_time = "2s"
redis_timeout = "500ms"
internal_address = "127.0.0.1:{internal}"
internal_token = "{TOKEN}"
"#,
            url = redis.url()
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let process = std::process::Command::new(env!("CARGO_BIN_EXE_charge-point-gateway"))
            .arg("--config")
            .arg(&path)
            .env_clear()
            .stdout(std::process::Stdio::null())
            .spawn()
            .map(GatewayProcess)
            .unwrap();
        wait_for_lease(redis, name, Duration::from_secs(10)).await;
        NodeProcess {
            process,
            ocpp,
            _dir: dir,
        }
    }
}

async fn records_of(redis: &RedisServer, node: &str) -> usize {
    let script = "local n = 0 for _, key in ipairs(redis.call('KEYS', ARGV[1])) do \
                  if redis.call('HGET', key, 'node') == ARGV[2] then n = n + 1 end end return n";
    redis
        .command(&["EVAL", script, "0", "cpgw:cp:*:owner", node])
        .await
        .unwrap()
        .parse()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_killed_node_s_charge_points_move_and_the_registry_converges() {
    const FLEET: usize = 1000;
    let redis = RedisServer::start().await;
    let mut a = NodeProcess::start(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    let mut fleet = Vec::with_capacity(FLEET);
    for i in 0..FLEET {
        let url = format!("ws://127.0.0.1:{}/ocpp/CP-{i}", a.ocpp);
        let (cp, _) = common::connect_url(&url, &["ocpp1.6"]).await.unwrap();
        fleet.push(cp);
    }
    wait_until(Duration::from_secs(20), || async {
        records_of(&redis, "node-a").await == FLEET
    })
    .await;

    // kill -9: no release, no lease dropped.
    a.process.kill();
    let killed = tokio::time::Instant::now();
    // Until the charge point is back, a command for it says why it cannot be delivered.
    let (status, body) = b.post("/api/v1/charge-points/CP-0/commands", reset()).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("node-a"), "{body}");

    // The fleet notices and reconnects to the surviving node.
    for cp in &mut fleet {
        assert!(matches!(cp.receive().await, common::Received::Closed(_)));
    }
    let mut moved = Vec::with_capacity(FLEET);
    for i in 0..FLEET {
        moved.push(b.connect(&format!("CP-{i}"), &["ocpp1.6"]).await);
    }
    wait_until(Duration::from_secs(30), || async {
        records_of(&redis, "node-b").await == FLEET
    })
    .await;
    let converged = killed.elapsed();
    assert_eq!(records_of(&redis, "node-a").await, 0);
    // A's lease runs out; it is no longer listed.
    wait_until(Duration::from_secs(10), || async {
        redis
            .command(&["EXISTS", "cpgw:node:node-a"])
            .await
            .is_ok_and(|reply| reply == "0")
    })
    .await;
    let command = b.command("CP-7", reset());
    accept_next(&mut moved[7]).await;
    assert_eq!(command.await.unwrap().0, 200);
    eprintln!(
        "{FLEET} charge points moved and the registry converged {converged:?} after the kill"
    );
}

#[tokio::test]
async fn credentials_in_redis_are_shared_by_the_nodes() {
    use charge_point_gateway::auth::CredentialsStore;
    let redis = RedisServer::start().await;
    // A file with one record, imported into Redis by the first node.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let hash =
        charge_point_gateway::auth::password::PasswordHashString::hash(b"imported-password-123")
            .unwrap();
    use std::io::Write;
    writeln!(
        file,
        "{}",
        json!({"id": "CP-FILE", "profile": 1, "password_hash": hash.as_str()})
    )
    .unwrap();
    let shared = |name: &str, import: bool| {
        let base = cluster_config(&redis, name);
        let path = file.path().to_owned();
        move |config: &mut Config| {
            base(config);
            config.auth.credentials_store = CredentialsStore::Redis;
            config.auth.reload_interval = Duration::from_millis(100);
            if import {
                config.auth.credentials_file = Some(path);
            }
        }
    };
    let a = TestGateway::start_with(shared("node-a", true)).await;
    let b = TestGateway::start_with(shared("node-b", false)).await;
    // B never read the file: the record came through Redis.
    b.connect_basic("CP-FILE", "CP-FILE", b"imported-password-123")
        .await
        .expect("imported record accepted on the other node");

    // A record set through A's admin API authenticates on B once B reads it.
    let (status, reply) = a
        .admin_request(
            reqwest::Method::PUT,
            "/api/v1/charge-points/CP-NEW/credentials",
            Some(json!({"profile": 1, "password": "correct-horse-battery"})),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    b.wait_for_series("ocppgw_credential_records", 2.0).await;
    b.connect_basic("CP-NEW", "CP-NEW", b"correct-horse-battery")
        .await
        .expect("accepted on the other node");

    // Deleted on B: refused on A.
    let (status, _) = b
        .admin_request(
            reqwest::Method::DELETE,
            "/api/v1/charge-points/CP-NEW/credentials",
            None,
        )
        .await;
    assert!(status == 200 || status == 204, "{status}");
    // A reads the change within its reload interval: until then the old record holds.
    wait_until(STEP, || async {
        let refused = a
            .connect_basic("CP-NEW", "CP-NEW", b"correct-horse-battery")
            .await
            .err()
            .map(|(status, _)| status.as_u16());
        assert!(matches!(refused, None | Some(401)), "{refused:?}");
        refused == Some(401)
    })
    .await;
    assert_eq!(a.sample("ocppgw_credential_records").await, Some(1.0));
}

#[tokio::test]
async fn nodes_share_a_redis_cluster_too() {
    use charge_point_gateway::cluster::redis_registry::{CommandMark, NodeLease};
    let redis = common::redis::RedisCluster::start().await;
    let config = ClusterConfig {
        redis_urls: redis.urls(),
        internal_token: Some(TOKEN.to_owned()),
        ..ClusterConfig::default()
    };
    // Every operation, over ids that fall in different slots of different primaries.
    let registry = RedisRegistry::new(&config).unwrap();
    let claimant = Claimant {
        node: "a",
        incarnation: "i",
        connected_at_ms: 1,
        version: "ocpp1.6",
    };
    for n in 0..50 {
        let id = format!("CP-{n}");
        let Claim::Taken { epoch, .. } = registry.claim(&id, &claimant, None).await.unwrap() else {
            panic!("claim of {id}");
        };
        assert_eq!(registry.owner(&id).await.unwrap().unwrap().epoch, epoch);
        assert!(registry.release(&id, "a", epoch).await.unwrap());
    }
    let lease = NodeLease {
        incarnation: "i".into(),
        url: "http://127.0.0.1:1".into(),
    };
    assert!(registry.put_lease("a", &lease, false).await.unwrap());
    assert_eq!(
        registry.nodes().await.unwrap(),
        vec![("a".to_owned(), lease)]
    );
    let day = Duration::from_secs(86_400);
    assert_eq!(
        registry
            .mark_command("c-1", "a", "i", "r1", day)
            .await
            .unwrap(),
        CommandMark::First
    );
    // The same reading again (a retry after a lost reply) finds its own mark; another
    // reading sees it pending.
    assert_eq!(
        registry
            .mark_command("c-1", "a", "i", "r1", day)
            .await
            .unwrap(),
        CommandMark::First
    );
    assert_eq!(
        registry
            .mark_command("c-1", "b", "j", "r2", day)
            .await
            .unwrap(),
        CommandMark::Pending {
            node: "a".into(),
            incarnation: "i".into()
        }
    );
    assert!(registry
        .set_credential("CP-1", None, Some("{}"))
        .await
        .unwrap());
    assert_eq!(registry.credentials().await.unwrap().1.len(), 1);

    // And two gateways on it: a command forwarded, a takeover.
    let a = TestGateway::start_with(cluster_settings(redis.urls(), "node-a")).await;
    let b = TestGateway::start_with(cluster_settings(redis.urls(), "node-b")).await;
    let mut cp = a.connect("CP-X", &["ocpp1.6"]).await;
    wait_until(STEP, || async {
        let (status, body) = b.get("/api/v1/connections/CP-X").await;
        status == 200 && body["gatewayNode"] == "node-a"
    })
    .await;
    let command = b.command("CP-X", reset());
    accept_next(&mut cp).await;
    let (status, body) = command.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let _moved = b.connect("CP-X", &["ocpp1.6"]).await;
    let (_, reason) = cp.closed().await;
    assert_eq!(reason, "replaced_by_new_connection");
}
