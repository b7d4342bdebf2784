//! The `[tls]` section: the `wss://` listener for security profiles 2 and 3.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config_check::InvalidOption;

/// The cipher suites of TLS 1.2: the four OCPP requires
/// (`TLS_ECDHE_ECDSA_WITH_AES_128/256_GCM`, `TLS_RSA_WITH_AES_128/256_GCM`), ECDHE with an
/// RSA certificate and ChaCha20 beside them, forward-secret ones first (the server's order
/// decides, so RSA key exchange is used only with a client that offers nothing else).
pub const DEFAULT_CIPHER_LIST: &str =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305:AES128-GCM-SHA256:AES256-GCM-SHA384";

/// The cipher suites of TLS 1.3.
pub const DEFAULT_CIPHERSUITES: &str =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

/// One certificate the listener serves, with its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM: the certificate, then its intermediates.
    pub certificate_file: PathBuf,
    /// PEM: its private key (RSA or ECDSA).
    pub key_file: PathBuf,
}

/// The oldest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.0: only for old 1.6 stations (a legacy option).
    #[serde(rename = "1.0")]
    V1_0,
    /// TLS 1.1: only for old 1.6 stations (a legacy option).
    #[serde(rename = "1.1")]
    V1_1,
    /// TLS 1.2 (the default).
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

/// What a profile 3 client certificate must say about its charge point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateBinding {
    /// The subject's CN is the charge point id of the URL (the default).
    ChargePointId,
    /// The subject's CN is the serial number the charge point's BootNotification
    /// carries (OCPP 2.0.1 B01.FR.12): checked at BootNotification, and a mismatch (or a
    /// BootNotification without one) closes the connection with 1008.
    SerialNumber,
    /// Any certificate the CA bundle verifies will do, for any id.
    None,
}

/// The `[tls]` section. The TLS listener exists when `certificates` is not empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the `wss://` listener.
    pub address: SocketAddr,
    /// The server certificates with their keys: one RSA and one ECDSA side by side is
    /// usual (the client's cipher suites pick). Empty: no TLS listener.
    pub certificates: Vec<CertificateFiles>,
    /// PEM bundle of the CAs that sign charge point certificates. Set: clients may present
    /// a certificate (profile 3), which must verify against it. Unset: no client
    /// certificates, so profile 3 is refused.
    pub client_ca_file: Option<PathBuf>,
    /// PEM certificate revocation lists of those CAs; a revoked certificate is refused.
    pub crl_file: Option<PathBuf>,
    /// What a client certificate must say about its charge point.
    pub client_certificate_binding: CertificateBinding,
    /// When set, a client certificate's subject O must contain this (OCPP 2.0.1
    /// A00.FR.404: the charging station operator's name).
    pub operator_name: Option<String>,
    /// The oldest TLS version accepted: `"1.2"` (default) or `"1.3"`; `"1.0"` and `"1.1"`
    /// are for old 1.6 stations only.
    pub min_version: TlsVersion,
    /// TLS 1.2 cipher suites, in OpenSSL's syntax, the server's order deciding.
    pub cipher_list: String,
    /// TLS 1.3 cipher suites, in OpenSSL's syntax.
    pub ciphersuites: String,
    /// Session tickets (TLS 1.2 RFC 5077 and TLS 1.3): a reconnecting client resumes its
    /// session without a full handshake, and the gateway keeps no state for it.
    pub session_tickets: bool,
    /// Sessions kept in memory for resumption by TLS 1.2 clients that do not support
    /// tickets; `0`: none.
    pub session_cache_size: u32,
    /// Every connection starts with a PROXY protocol v2 header, before the TLS handshake
    /// (a TCP load balancer passing TLS through with `send-proxy-v2`); only from
    /// `listener.trusted_proxies`.
    pub proxy_protocol: bool,
    /// How often the certificate, key, CA and CRL files are checked for changes (they
    /// are also read again on SIGHUP); open connections keep their session.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            address: SocketAddr::from(([0, 0, 0, 0], 8443)),
            certificates: Vec::new(),
            client_ca_file: None,
            crl_file: None,
            client_certificate_binding: CertificateBinding::ChargePointId,
            operator_name: None,
            min_version: TlsVersion::V1_2,
            cipher_list: DEFAULT_CIPHER_LIST.to_owned(),
            ciphersuites: DEFAULT_CIPHERSUITES.to_owned(),
            session_tickets: true,
            session_cache_size: 20_480,
            proxy_protocol: false,
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl TlsConfig {
    /// Whether the TLS listener exists.
    pub fn enabled(&self) -> bool {
        !self.certificates.is_empty()
    }

    /// Checks the values that parse but cannot be used (the files themselves are read at
    /// start, with their own errors).
    pub fn validate(&self) -> Result<(), InvalidOption> {
        if self.crl_file.is_some() && self.client_ca_file.is_none() {
            return Err(InvalidOption::new(
                "tls.crl_file",
                "needs tls.client_ca_file (revocation applies to client certificates)",
            ));
        }
        if self.reload_interval.is_zero() {
            return Err(InvalidOption::new(
                "tls.reload_interval",
                "must be more than 0s",
            ));
        }
        if self.operator_name.as_deref().is_some_and(str::is_empty) {
            return Err(InvalidOption::new(
                "tls.operator_name",
                "must not be empty when set",
            ));
        }
        Ok(())
    }
}
