//! The gateway binary in a process of its own, for what only a process can suffer (a
//! SIGKILL at the worst moment), and the free ports it listens on.

/// A free loopback port (bound, then released for the process under test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway process, killed (SIGKILL) when dropped.
pub struct GatewayProcess(pub std::process::Child);

impl GatewayProcess {
    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
