//! Property tests of the PROXY protocol v2 parser, which reads bytes a connection sends
//! before anything else: every input is parsed or refused, never a panic and never more
//! than the header's own length read; every header a balancer could send survives
//! encoding. Failing cases proptest finds are kept in
//! `proxy_properties.proptest-regressions` and replayed first.

use std::net::{IpAddr, SocketAddr};

use charge_point_gateway::proxy_protocol::{
    encode, encode_ssl_tlv, header_length, parse, read, ProxyError, FIXED_LENGTH, MAX_LENGTH,
    SIGNATURE,
};
use proptest::prelude::*;

fn split(bytes: &[u8]) -> Option<([u8; FIXED_LENGTH], &[u8])> {
    let fixed: [u8; FIXED_LENGTH] = bytes.get(..FIXED_LENGTH)?.try_into().ok()?;
    Some((fixed, &bytes[FIXED_LENGTH..]))
}

fn address() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_bytes_after_the_signature_are_parsed_or_refused(
        command in any::<u8>(),
        family in any::<u8>(),
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut fixed = [0u8; FIXED_LENGTH];
        fixed[..12].copy_from_slice(&SIGNATURE);
        fixed[12] = command;
        fixed[13] = family;
        fixed[14..].copy_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        match header_length(&fixed) {
            Ok(length) => {
                prop_assert_eq!(length, body.len());
                let _ = parse(&fixed, &body);
            }
            Err(ProxyError::UnsupportedVersion(version)) => prop_assert_ne!(version, 2),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn any_bytes_at_all_are_refused_or_parsed(bytes in prop::collection::vec(any::<u8>(), 16..200)) {
        let (fixed, rest) = split(&bytes).unwrap();
        if let Ok(length) = header_length(&fixed) {
            prop_assert!(length <= MAX_LENGTH);
            if rest.len() >= length {
                let _ = parse(&fixed, &rest[..length]);
            }
        }
    }

    #[test]
    fn headers_survive_encoding(
        source in address(),
        destination in address(),
        common_name in prop::option::of("[A-Za-z0-9:_.-]{1,48}"),
        verified in any::<bool>(),
    ) {
        let tlv = encode_ssl_tlv(common_name.as_deref(), verified);
        let header = encode(source, destination, &tlv);
        let (fixed, rest) = split(&header).unwrap();
        let parsed = parse(&fixed, rest).unwrap();
        let expected_source = match (source, destination) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) => source,
            _ => match source.ip() {
                IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), source.port()),
                IpAddr::V6(_) => source,
            },
        };
        prop_assert_eq!(parsed.source, Some(expected_source));
        let tls = parsed.tls.unwrap();
        prop_assert_eq!(tls.common_name, common_name.clone());
        prop_assert_eq!(tls.certificate_verified, verified && common_name.is_some());
    }

    #[test]
    fn reading_never_consumes_past_the_header(
        source in address(),
        after in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let header = encode(source, source, &[]);
        let bytes = [&header[..], &after].concat();
        let mut stream: &[u8] = &bytes;
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(read(&mut stream)).unwrap();
        prop_assert_eq!(stream, &after[..]);
    }
}
