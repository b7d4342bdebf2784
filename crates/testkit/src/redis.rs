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

    /// Starts it again on the same port, empty (it keeps nothing on disk).
    pub async fn restart_empty(&mut self) {
        self.kill();
        self.child = spawn_redis(self.port);
        self.wait_answering().await;
    }

    async fn wait_answering(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = self.command(&["PING"]).await {
                if reply.contains("PONG") {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start answering"
            );
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
