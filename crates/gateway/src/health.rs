//! Whether the gateway should receive traffic, and the state of each part: what
//! `/readyz`, `/health` and `ocppgw_ready` report.
//!
//! Parts that can make the gateway unready register a check; the order of registration
//! is the order of diagnosis (the first failing check is the reason given).

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Value};

/// Where the gateway is in its life: accepting, or shutting down.
#[derive(Debug, Default)]
pub struct Lifecycle {
    listening: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    /// The OCPP listener accepts connections (or stopped accepting).
    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Relaxed);
    }

    /// Shutdown has begun.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the OCPP listener accepts connections.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;
type Report = Box<dyn Fn() -> Value + Send + Sync>;

/// The readiness checks and the components `/health` lists.
pub struct Health {
    lifecycle: std::sync::Arc<Lifecycle>,
    node_id: String,
    checks: Vec<Check>,
    components: Vec<(&'static str, Report)>,
}

impl Health {
    /// Health of the instance `node_id` in `lifecycle`; not draining and listening are
    /// the first two conditions of readiness.
    pub fn new(lifecycle: std::sync::Arc<Lifecycle>, node_id: String) -> Health {
        Health {
            lifecycle,
            node_id,
            checks: Vec::new(),
            components: Vec::new(),
        }
    }

    /// Adds a condition of readiness: `Err` says why the gateway must not get traffic.
    pub fn check(
        &mut self,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> &mut Health {
        self.checks.push(Box::new(check));
        self
    }

    /// Adds a component to the `/health` report, under `name`.
    pub fn component(
        &mut self,
        name: &'static str,
        report: impl Fn() -> Value + Send + Sync + 'static,
    ) -> &mut Health {
        self.components.push((name, Box::new(report)));
        self
    }

    /// Whether the gateway should receive traffic, and why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.lifecycle.is_draining() {
            return Err("shutting down".to_owned());
        }
        if !self.lifecycle.is_listening() {
            return Err("OCPP listener not bound".to_owned());
        }
        self.checks.iter().try_for_each(|check| check())
    }

    /// The `/health` body: overall status, readiness and every component.
    pub fn report(&self) -> Value {
        let ready = self.readiness();
        let mut components = serde_json::Map::new();
        for (name, report) in &self.components {
            components.insert((*name).to_owned(), report());
        }
        components.insert("draining".to_owned(), json!(self.lifecycle.is_draining()));
        json!({
            "status": if ready.is_ok() { "up" } else { "down" },
            "ready": ready.is_ok(),
            "reason": ready.err(),
            "nodeId": self.node_id,
            "version": env!("CARGO_PKG_VERSION"),
            "components": components,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_first_failing_condition_is_the_reason() {
        let lifecycle = Arc::new(Lifecycle::default());
        let mut health = Health::new(lifecycle.clone(), "node".into());
        health
            .check(|| Err("sink down".into()))
            .check(|| Err("consumer".into()));
        assert_eq!(health.readiness(), Err("OCPP listener not bound".into()));
        lifecycle.set_listening(true);
        assert_eq!(health.readiness(), Err("sink down".into()));
        lifecycle.start_draining();
        assert_eq!(health.readiness(), Err("shutting down".into()));
        assert_eq!(health.report()["components"]["draining"], true);
    }
}
