//! Property tests of what a charge point controls before its WebSocket is open: the
//! request head and the charge point id in the path. Whatever arrives is parsed or
//! refused, never a panic; every valid id survives percent-encoding unchanged.
//! Failing cases proptest finds are kept in `handshake_properties.proptest-regressions`
//! and replayed first.

use charge_point_gateway::handshake::{
    check_charge_point_id, parse_request_head, HandshakePolicy, ID_EXTRA_CHARACTERS,
};
use ocpp::OcppVersion;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use proptest::prelude::*;

fn policy() -> HandshakePolicy {
    HandshakePolicy {
        path_prefix: "/ocpp".into(),
        supported: OcppVersion::ALL.to_vec(),
        fallback: Some(OcppVersion::V16),
        max_id_length: 48,
    }
}

/// Ids every charge point may have: letters, digits and the extra characters.
fn valid_id() -> impl Strategy<Value = String> {
    let allowed: Vec<char> = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain(ID_EXTRA_CHARACTERS.chars())
        .collect();
    prop::collection::vec(prop::sample::select(allowed), 1..=48)
        .prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_path_gives_an_id_or_a_refusal(path in "(/ocpp/)?[^\u{0}]{0,120}") {
        let policy = policy();
        if let Ok(id) = policy.charge_point_id(&path) {
            // Whatever is accepted passes the id rules.
            prop_assert!(check_charge_point_id(&id, 48).is_ok());
        }
    }

    #[test]
    fn a_valid_id_survives_percent_encoding(id in valid_id()) {
        let policy = policy();
        let plain = format!("/ocpp/{id}");
        let encoded = format!("/ocpp/{}", utf8_percent_encode(&id, NON_ALPHANUMERIC));
        prop_assert_eq!(policy.charge_point_id(&encoded).ok(), Some(id.clone()));
        // `#` starts a fragment, so a client sends it encoded; every other allowed
        // character also passes as is.
        if !id.contains('#') {
            prop_assert_eq!(policy.charge_point_id(&plain).ok(), Some(id));
        }
    }

    #[test]
    fn any_request_head_is_parsed_refused_or_awaited(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_request_head(&bytes);
    }

    #[test]
    fn any_upgrade_request_head_is_parsed_refused_or_awaited(
        path in "[ -~]{0,60}",
        headers in prop::collection::vec(("[!-9;-~]{1,20}", "[ -~]{0,40}"), 0..12),
    ) {
        let mut head = format!("GET {path} HTTP/1.1\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let _ = parse_request_head(head.as_bytes());
    }
}
