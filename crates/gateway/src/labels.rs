//! Closed sets: every value a metric label, an event field or a log field of these kinds
//! can take, each as an enum with `as_str()` and `ALL`, so that the metrics' series
//! (started at 0 from `ALL`), the code that records them and docs/metrics.md cannot drift
//! apart the way hand-kept string lists do.

/// Defines a closed set: the enum, its label strings and the list of all values.
macro_rules! closed_set {
    (
        $(#[$meta:meta])*
        $name:ident { $($(#[$variant_meta:meta])* $variant:ident => $label:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$variant_meta])* $variant),+
        }

        impl $name {
            /// Every value, in the order the docs list them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label: the value as metrics, events and logs spell it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_set! {
    /// Why a charge point connection ended: the `reason` of `connection.closed` events and
    /// of `ocppgw_disconnects_total`.
    DisconnectReason {
        /// The TCP connection ended or failed without a WebSocket close, or a write did not
        /// complete in time.
        ConnectionLost => "connection_lost",
        /// A message or frame over `listener.max_message_size`.
        MessageTooBig => "message_too_big",
        /// A text frame or a close reason that is not UTF-8.
        InvalidUtf8 => "invalid_utf8",
        /// A WebSocket protocol violation.
        WebsocketProtocolError => "websocket_protocol_error",
        /// A binary frame (OCPP-J uses text frames).
        BinaryFrame => "binary_frame",
        /// The charge point closed the WebSocket.
        ClosedByChargePoint => "closed_by_charge_point",
        /// No pong within `session.pong_timeout`.
        PingTimeout => "ping_timeout",
        /// `session.bad_message_limit` consecutive bad messages.
        TooManyBadMessages => "too_many_bad_messages",
        /// The BootNotification's serial number is not the one the client certificate
        /// names (`tls.client_certificate_binding = "serial_number"`).
        SerialNumberMismatch => "serial_number_mismatch",
        /// The same charge point id connected again.
        ReplacedByNewConnection => "replaced_by_new_connection",
        /// `DELETE /api/v1/connections/{id}`.
        DisconnectedByOperator => "disconnected_by_operator",
        /// Graceful shutdown.
        GatewayShutdown => "gateway_shutdown",
        /// A gateway-side close with no recorded reason (no code path produces it).
        ClosedByGateway => "closed_by_gateway",
    }
}

impl DisconnectReason {
    /// The close code the gateway sends when it ends a connection for this reason; `None`
    /// where it drops the connection without a close frame, or the charge point closed.
    pub fn close_code(self) -> Option<u16> {
        match self {
            DisconnectReason::ConnectionLost
            | DisconnectReason::PingTimeout
            | DisconnectReason::ClosedByChargePoint => None,
            DisconnectReason::MessageTooBig => Some(1009),
            DisconnectReason::InvalidUtf8 => Some(1007),
            DisconnectReason::WebsocketProtocolError => Some(1002),
            DisconnectReason::BinaryFrame => Some(1003),
            DisconnectReason::TooManyBadMessages | DisconnectReason::SerialNumberMismatch => {
                Some(1008)
            }
            DisconnectReason::ReplacedByNewConnection
            | DisconnectReason::DisconnectedByOperator => Some(1000),
            DisconnectReason::GatewayShutdown | DisconnectReason::ClosedByGateway => Some(1001),
        }
    }
}

closed_set! {
    /// How a WebSocket handshake on the OCPP listener ended:
    /// `ocppgw_connection_attempts_total{result}`.
    ConnectionAttempt {
        /// Upgraded.
        Accepted => "accepted",
        /// Not valid HTTP/1.1, an oversized head, not `GET`, or no key.
        BadRequest => "bad_request",
        /// A plain HTTP request.
        NotWebsocket => "not_websocket",
        /// A WebSocket version other than 13.
        UnsupportedWebsocketVersion => "unsupported_websocket_version",
        /// Not `{prefix}/{id}`.
        BadPath => "bad_path",
        /// An id no charge point may have.
        BadChargePointId => "bad_charge_point_id",
        /// No supported subprotocol offered.
        UnsupportedSubprotocol => "unsupported_subprotocol",
        /// `listener.max_connections` reached, or the open-file budget spent.
        AtCapacity => "at_capacity",
        /// `listener.max_connections_per_address` reached for the socket's address.
        AddressLimit => "address_limit",
        /// Refused during shutdown.
        ShuttingDown => "shutting_down",
        /// Refused by authentication (`401`): see `ocppgw_auth_results_total` for why.
        Unauthorized => "unauthorized",
        /// Refused without checking credentials, while its id or address backs off after
        /// failed attempts (`429`).
        AuthBackoff => "auth_backoff",
        /// A connection to a PROXY protocol listener from outside
        /// `listener.trusted_proxies`, closed at once.
        UntrustedProxy => "untrusted_proxy",
        /// No valid PROXY protocol v2 header where the listener expects one.
        BadProxyHeader => "bad_proxy_header",
        /// The TLS handshake failed (no shared version or cipher, not TLS, a reset).
        TlsHandshakeFailed => "tls_handshake_failed",
        /// The client's certificate did not verify (expired, unknown CA, revoked).
        CertificateRefused => "certificate_refused",
        /// The connection failed during the handshake.
        HandshakeFailed => "handshake_failed",
        /// The handshake did not complete within `listener.handshake_timeout`.
        HandshakeTimeout => "handshake_timeout",
    }
}

closed_set! {
    /// Why a frame was rejected before dispatch: `ocppgw_invalid_frames_total{kind}`.
    InvalidFrameKind {
        /// Not JSON.
        NotJson => "not_json",
        /// A text frame that is not UTF-8.
        InvalidUtf8 => "invalid_utf8",
        /// JSON, but not an array.
        NotArray => "not_array",
        /// The message type id is not a number.
        BadMessageType => "bad_message_type",
        /// A message type the version does not have.
        UnsupportedMessageType => "unsupported_message_type",
        /// The message id is not a string of at most 36 characters.
        BadMessageId => "bad_message_id",
        /// The array has the wrong number of elements.
        WrongLength => "wrong_length",
        /// Another element has the wrong type.
        BadField => "bad_field",
        /// A CALL reusing the id of a CALL still in flight.
        DuplicateMessageId => "duplicate_message_id",
        /// A binary frame.
        Binary => "binary",
        /// Over `listener.max_message_size`.
        TooBig => "too_big",
    }
}

closed_set! {
    /// Where a WebSocket handshake is: `ocppgw_handshakes{state}`.
    HandshakeState {
        /// Holding one of `listener.max_handshakes` places.
        Running => "running",
        /// Waiting for a place.
        Waiting => "waiting",
    }
}

closed_set! {
    /// The gateway's HTTP listeners: `ocppgw_http_connections{listener}`.
    HttpListener {
        /// The admin API (`admin.address`).
        Admin => "admin",
        /// The metrics endpoint (`metrics.address`).
        Metrics => "metrics",
        /// The cluster's internal API (`cluster.internal_address`).
        Internal => "internal",
    }
}

closed_set! {
    /// How a command ended: the `status` of a command result and the `outcome` of
    /// `ocppgw_commands_total`.
    CommandStatus {
        /// The charge point answered with a valid CALLRESULT.
        Completed => "completed",
        /// The charge point answered with a CALLERROR, or with a CALLRESULT that failed
        /// validation.
        CallError => "callError",
        /// No answer within the command's timeout.
        Timeout => "timeout",
        /// The charge point is not connected to this gateway, nor (in a cluster) to a node
        /// that could be reached; or it left before answering.
        NotConnected => "notConnected",
        /// The command's `expiresAt` passed before it could be sent or answered (Kafka).
        Expired => "expired",
        /// Refused before anything was sent: malformed, unknown action, invalid payload.
        Invalid => "invalid",
        /// Too many commands already wait for the charge point (admin API).
        QueueFull => "queueFull",
        /// A cluster node began sending the command and left without a result (its
        /// partition moved, or it died): whether the charge point got it is unknown
        /// (Kafka).
        Unknown => "unknown",
    }
}

closed_set! {
    /// Where a command came from: `ocppgw_commands_total{source}`.
    CommandSource {
        /// `POST /api/v1/charge-points/{id}/commands`.
        Admin => "admin",
        /// The Kafka commands topic.
        Kafka => "kafka",
    }
}

closed_set! {
    /// Who sent a CALL: the `direction` of `ocppgw_call_duration_seconds` and
    /// `ocppgw_call_errors_total`.
    CallDirection {
        /// A charge point's CALL, answered by the gateway.
        Inbound => "inbound",
        /// The gateway's CALL (a command), answered by the charge point.
        Outbound => "outbound",
    }
}

closed_set! {
    /// How a CALL round trip ended: `ocppgw_call_duration_seconds{outcome}`.
    CallEnd {
        /// Answered with a CALLRESULT.
        Completed => "completed",
        /// Answered with a CALLERROR (or a response that failed validation).
        CallError => "callError",
        /// No answer in time.
        Timeout => "timeout",
        /// The connection ended first, or the charge point was never reached.
        NotConnected => "notConnected",
    }
}

closed_set! {
    /// An OCPP security profile (OCPP 1.6 security whitepaper; 2.0.1 Part 2, A00): the
    /// `profile` of `ocppgw_auth_results_total`. Declared in profile order, so that
    /// `profile as u8` is the profile's number.
    SecurityProfile {
        /// Profile 0: no authentication (a lab, or a network that is trusted as a whole).
        Unsecured => "0",
        /// Profile 1: HTTP Basic authentication, without TLS.
        BasicAuth => "1",
        /// Profile 2: TLS, and HTTP Basic authentication.
        TlsBasicAuth => "2",
        /// Profile 3: TLS with a client certificate.
        TlsClientCertificate => "3",
    }
}

closed_set! {
    /// How a charge point's authentication ended: `ocppgw_auth_results_total{result}`.
    /// Every failure gets the same answer (`401`); only this label tells them apart.
    AuthResult {
        /// Authenticated, or no authentication required (profile 0).
        Accepted => "accepted",
        /// No record for the id, and unknown ids are refused.
        UnknownChargePoint => "no_record",
        /// No `Authorization` header where the profile needs one.
        MissingCredentials => "missing_credentials",
        /// An `Authorization` header that is not Basic credentials.
        MalformedCredentials => "malformed_credentials",
        /// The Basic user-id is not the charge point id of the URL.
        UsernameMismatch => "username_mismatch",
        /// The password is not the charge point's.
        WrongPassword => "wrong_password",
        /// The record requires a profile this listener cannot give (a downgrade attempt).
        ProfileNotOffered => "profile_not_offered",
        /// Profile 3 without a client certificate.
        MissingCertificate => "missing_certificate",
        /// A client certificate that names another charge point or operator.
        CertificateMismatch => "certificate_mismatch",
        /// Refused unchecked, while the id or address backs off after failures.
        Backoff => "backoff",
    }
}

closed_set! {
    /// The kinds of security event: the CloudEvents type
    /// `chargepointgateway.security.{kind}` and `ocppgw_security_events_total{kind}`.
    SecurityEventKind {
        /// A charge point failed authentication.
        AuthFailed => "auth_failed",
        /// A charge point asked for a weaker profile than its record requires.
        DowngradeAttempt => "downgrade_attempt",
        /// A client certificate was refused: it did not verify (TLS), or it names another
        /// charge point or operator.
        CertificateRefused => "certificate_refused",
        /// A connection was refused by a limit (auth-failure backoff).
        LimitHit => "limit_hit",
        /// A charge point's password was rotated.
        CredentialsRotated => "credentials_rotated",
    }
}

impl SecurityProfile {
    /// Whether the profile authenticates with a password (1 and 2).
    pub fn uses_password(self) -> bool {
        matches!(
            self,
            SecurityProfile::BasicAuth | SecurityProfile::TlsBasicAuth
        )
    }
}

impl TryFrom<u8> for SecurityProfile {
    type Error = u8;

    fn try_from(number: u8) -> Result<SecurityProfile, u8> {
        SecurityProfile::ALL
            .get(usize::from(number))
            .copied()
            .ok_or(number)
    }
}

closed_set! {
    /// How a TLS handshake ended: `ocppgw_tls_handshakes_total{result}`.
    TlsHandshakeResult {
        /// A full handshake.
        Full => "full",
        /// A resumed session (no key exchange or certificate check again).
        Resumed => "resumed",
        /// The client's certificate did not verify.
        CertificateRefused => "certificate_refused",
        /// Any other failure: no shared version or cipher, not TLS, a reset.
        Failed => "failed",
    }
}

closed_set! {
    /// A cluster registry operation: `ocppgw_cluster_registry_errors_total{operation}`.
    RegistryOperation {
        /// Claiming a charge point after its handshake.
        Claim => "claim",
        /// Releasing it when its connection ends.
        Release => "release",
        /// Finding a charge point's owner (commands, introspection).
        Lookup => "lookup",
        /// Writing or renewing this node's lease.
        Lease => "lease",
        /// Marking a Kafka command id across nodes.
        CommandId => "command_id",
    }
}

closed_set! {
    /// How a registry claim ended: `ocppgw_cluster_claims_total{result}`.
    ClaimResult {
        /// The charge point was free, or held here before.
        Claimed => "claimed",
        /// Another node held it; that node is told to close its connection.
        TookOver => "took_over",
        /// Reconciling after a registry outage found a newer connection on another node;
        /// the one here was closed.
        Superseded => "superseded",
        /// Redis did not answer; the claim is retried when it does.
        Failed => "failed",
    }
}

closed_set! {
    /// How a command forwarded to another node ended:
    /// `ocppgw_cluster_forwards_total{result}`.
    ForwardResult {
        /// The owner answered with the command's outcome.
        Answered => "answered",
        /// The owner no longer held the charge point under the epoch read.
        StaleEpoch => "stale_epoch",
        /// The owner did not answer, or not in time.
        Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_within_each_set() {
        fn unique<T: Copy>(all: &[T], label: impl Fn(T) -> &'static str) {
            let mut labels: Vec<&str> = all.iter().map(|value| label(*value)).collect();
            labels.sort();
            labels.dedup();
            assert_eq!(labels.len(), all.len());
        }
        unique(DisconnectReason::ALL, DisconnectReason::as_str);
        unique(ConnectionAttempt::ALL, ConnectionAttempt::as_str);
        unique(InvalidFrameKind::ALL, InvalidFrameKind::as_str);
        unique(HttpListener::ALL, HttpListener::as_str);
        unique(CommandStatus::ALL, CommandStatus::as_str);
        unique(CommandSource::ALL, CommandSource::as_str);
        unique(CallDirection::ALL, CallDirection::as_str);
        unique(CallEnd::ALL, CallEnd::as_str);
        unique(HandshakeState::ALL, HandshakeState::as_str);
        unique(SecurityProfile::ALL, SecurityProfile::as_str);
        unique(AuthResult::ALL, AuthResult::as_str);
        unique(SecurityEventKind::ALL, SecurityEventKind::as_str);
        unique(TlsHandshakeResult::ALL, TlsHandshakeResult::as_str);
        unique(RegistryOperation::ALL, RegistryOperation::as_str);
        unique(ClaimResult::ALL, ClaimResult::as_str);
        unique(ForwardResult::ALL, ForwardResult::as_str);
    }

    #[test]
    fn a_profile_is_its_number() {
        for number in 0..=3u8 {
            let profile = SecurityProfile::try_from(number).unwrap();
            assert_eq!(profile as u8, number);
            assert_eq!(profile.as_str(), number.to_string());
        }
        assert_eq!(SecurityProfile::try_from(4), Err(4));
    }

    #[test]
    fn the_gateway_closes_with_a_code_exactly_when_it_sends_a_close_frame() {
        use DisconnectReason::*;
        for reason in [ConnectionLost, PingTimeout, ClosedByChargePoint] {
            assert_eq!(reason.close_code(), None, "{reason}");
        }
        assert_eq!(InvalidUtf8.close_code(), Some(1007));
        assert_eq!(GatewayShutdown.close_code(), Some(1001));
    }
}
