//! The `[listener]` section: where and how charge points connect.

use std::{net::SocketAddr, time::Duration};

use ocpp::OcppVersion;
use serde::{Deserialize, Serialize};

use crate::config_check::InvalidOption;

/// The OCPP WebSocket listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to listen on for charge points.
    pub address: SocketAddr,
    /// URL path prefix; charge points connect to `{path_prefix}/{chargePointId}`.
    pub path_prefix: String,
    /// Supported OCPP versions, most preferred first.
    pub subprotocols: Vec<OcppVersion>,
    /// Version assumed when a charge point offers no subprotocol (`"none"` to refuse).
    #[serde(with = "optional_version")]
    pub fallback_subprotocol: Option<OcppVersion>,
    /// Largest accepted WebSocket message, in bytes; larger ones close with 1009.
    pub max_message_size: usize,
    /// WebSocket read buffer per connection, in bytes.
    pub read_buffer_size: usize,
    /// Time a client has to complete the TCP-to-WebSocket handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Longest accepted charge point id, in characters (after percent-decoding).
    pub max_charge_point_id_length: usize,
    /// Most concurrent charge point connections; further handshakes are refused with 503.
    pub max_connections: usize,
    /// Most sockets (connected or in their handshake) from one source address; further
    /// ones are closed at once. `0`: no limit (charge points behind one NAT, or a load
    /// balancer without the PROXY protocol, share an address).
    pub max_connections_per_address: usize,
    /// Most WebSocket handshakes in progress at once; further sockets wait for a place
    /// within `handshake_timeout`.
    pub max_handshakes: usize,
    /// New sockets accepted per second on average, with bursts of one second's worth;
    /// beyond it sockets wait in the kernel's accept queue. `0`: no limit.
    pub accept_rate: u32,
    /// Every connection to this listener starts with a PROXY protocol v2 header (HAProxy's
    /// `send-proxy-v2`) naming the real client, whose address then counts for the limits,
    /// the logs and the events. Needs `trusted_proxies`.
    pub proxy_protocol: bool,
    /// The load balancers allowed to connect to a listener with `proxy_protocol` (or
    /// `tls.proxy_protocol`), as addresses or CIDR prefixes; other sources are closed at
    /// once. A balancer that ended TLS itself (`send-proxy-v2-ssl-cn`) is believed about
    /// the client's certificate too.
    pub trusted_proxies: Vec<AddressRange>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            address: ([0, 0, 0, 0], 8080).into(),
            path_prefix: "/ocpp".to_owned(),
            subprotocols: OcppVersion::ALL.to_vec(),
            fallback_subprotocol: Some(OcppVersion::V16),
            max_message_size: 64 * 1024,
            read_buffer_size: 4 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_charge_point_id_length: 48,
            max_connections: 19_000,
            max_connections_per_address: 0,
            max_handshakes: 1000,
            accept_rate: 0,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
        }
    }
}

impl ListenerConfig {
    /// Checks values that are well-typed but unusable.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        let invalid = InvalidOption::new;
        if !self.path_prefix.starts_with('/')
            || self.path_prefix.ends_with('/') && self.path_prefix.len() > 1
        {
            return Err(invalid(
                "listener.path_prefix",
                "must start with `/` and not end with `/` (e.g. `/ocpp`)",
            ));
        }
        if self.subprotocols.is_empty() {
            return Err(invalid(
                "listener.subprotocols",
                "must name at least one OCPP version",
            ));
        }
        let mut unique = self.subprotocols.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != self.subprotocols.len() {
            return Err(invalid("listener.subprotocols", "lists a version twice"));
        }
        if let Some(fallback) = self.fallback_subprotocol {
            if !self.subprotocols.contains(&fallback) {
                return Err(invalid(
                    "listener.fallback_subprotocol",
                    "must be one of listener.subprotocols (or \"none\")",
                ));
            }
        }
        if !(256..=16 * 1024 * 1024).contains(&self.max_message_size) {
            return Err(invalid(
                "listener.max_message_size",
                "must be between 256 and 16777216 bytes",
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.read_buffer_size) {
            return Err(invalid(
                "listener.read_buffer_size",
                "must be between 1024 and 1048576 bytes",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid(
                "listener.handshake_timeout",
                "must be greater than zero",
            ));
        }
        if !(1..=1000).contains(&self.max_charge_point_id_length) {
            return Err(invalid(
                "listener.max_charge_point_id_length",
                "must be between 1 and 1000",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("listener.max_connections", "must be at least 1"));
        }
        if self.max_handshakes == 0 {
            return Err(invalid("listener.max_handshakes", "must be at least 1"));
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(invalid(
                "listener.trusted_proxies",
                "must list the load balancers when listener.proxy_protocol is on (anyone else could claim any address)",
            ));
        }
        Ok(())
    }

    /// Whether `address` is one of the trusted proxies.
    pub fn trusts_proxy(&self, address: std::net::IpAddr) -> bool {
        let address = match address {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies
            .iter()
            .any(|range| range.0.contains(&address))
    }
}

/// An address or a CIDR prefix (`10.0.0.5`, `10.0.0.0/8`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange(pub ipnet::IpNet);

impl std::str::FromStr for AddressRange {
    type Err = String;

    fn from_str(text: &str) -> Result<AddressRange, String> {
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(AddressRange)
            .map_err(|_| format!("{text:?} is not an address or a CIDR prefix"))
    }
}

impl Serialize for AddressRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AddressRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<AddressRange, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `Option<OcppVersion>` written as a subprotocol name, or `"none"`.
mod optional_version {
    use ocpp::OcppVersion;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<OcppVersion>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.map_or("none", OcppVersion::subprotocol))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OcppVersion>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() || text.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}
