//! A real Redis server process (Debian's `redis-server`, no persistence) for the cluster
//! tests, on a free loopback port.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    /// The port it listens on.
    pub port: u16,
    child: Child,
}

fn spawn_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start `redis-server` (run scripts/test.sh, which installs it): {e}")
        })
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers. Fails (never skips)
    /// when redis-server is missing: `scripts/build-deps.sh` installs it.
    pub async fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = RedisServer {
            port,
            child: spawn_redis(port),
        };
        server.wait_answering().await;
        server
    }

    /// The `redis://` URL of the server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A handle that freezes this server for a while, usable from another task.
    pub fn freezer(&self) -> Freezer {
        Freezer {
            pid: self.child.id(),
        }
    }

    /// Starts it again on the same port, empty (it keeps nothing on disk).
    pub async fn restart_empty(&mut self) {
        self.kill();
        self.child = spawn_redis(self.port);
        self.wait_answering().await;
    }

    async fn wait_answering(&self) {
        self.wait_for_reply(&["PING"], "PONG", Duration::from_secs(20))
            .await;
    }

    /// Runs `args` until the reply contains `expected`, at most `within`.
    async fn wait_for_reply(&self, args: &[&str], expected: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let reply = self.command(args).await.unwrap_or_default();
            if reply.contains(expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server never answered {args:?} with {expected}: {reply}"
            );
            // redis-cli has no way to wait for a state: ask again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs one command with `redis-cli` and returns its raw output.
    pub async fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let output = tokio::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .await?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// Freezes a `redis-server` process, as a server that blinks.
#[derive(Clone, Copy)]
pub struct Freezer {
    pid: u32,
}

impl Freezer {
    /// Stops the server (SIGSTOP) for `duration`, then lets it go on (SIGCONT): every
    /// request sent meanwhile waits, and is executed late.
    pub async fn stall(self, duration: Duration) {
        self.freeze().await;
        tokio::time::sleep(duration).await;
        self.thaw().await;
    }

    /// Stops the server (SIGSTOP) until [`Freezer::thaw`].
    pub async fn freeze(self) {
        self.signal("-STOP").await;
    }

    /// Lets a frozen server go on (SIGCONT).
    pub async fn thaw(self) {
        self.signal("-CONT").await;
    }

    async fn signal(self, name: &str) {
        let status = tokio::process::Command::new("kill")
            .args([name, &self.pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill {name} {} failed", self.pid);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three primaries (no replicas) on free loopback ports, every slot
/// assigned, killed on drop.
pub struct RedisCluster {
    /// The primaries.
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// Starts three primaries and joins them into one cluster.
    pub async fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for index in 0..3 {
            let port = free_cluster_port();
            let node_dir = dir.path().join(format!("node-{index}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--dir",
                    node_dir.to_str().unwrap(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts (scripts/build-deps.sh installs it)");
            let node = RedisServer { port, child };
            node.wait_answering().await;
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .unwrap();
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        for node in &cluster.nodes {
            node.wait_for_reply(
                &["CLUSTER", "INFO"],
                "cluster_state:ok",
                Duration::from_secs(30),
            )
            .await;
        }
        cluster
    }

    /// The seed URLs of every primary.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
