//! The PROXY protocol, version 2 (HAProxy's `send-proxy-v2`): a binary header a load
//! balancer puts in front of a connection to say who the client really is, and, when the
//! balancer ended TLS itself (`send-proxy-v2-ssl-cn`), what it learnt from the client's
//! certificate.
//!
//! The header is parsed here without I/O ([`header_length`], [`parse`]); [`read`] reads
//! exactly its bytes from a stream, so nothing after it is consumed. It is only believed
//! from the configured proxy addresses (the listener checks that first): anyone else could
//! claim any address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part: signature, version and command, family, length.
pub const FIXED_LENGTH: usize = 16;
/// Longest header accepted (addresses and TLVs): a balancer's SSL TLVs take a few hundred
/// bytes; a client cannot make the gateway buffer more.
pub const MAX_LENGTH: usize = 2048;

const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// What a PROXY header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client's address; `None` for a `LOCAL` header (the balancer's own health
    /// check) or an address family other than IPv4 and IPv6.
    pub source: Option<SocketAddr>,
    /// What the balancer learnt from TLS it ended itself, if it did.
    pub tls: Option<ProxiedTls>,
}

/// TLS ended at the balancer (the `PP2_TYPE_SSL` TLV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedTls {
    /// Whether the client presented a certificate that the balancer verified.
    pub certificate_verified: bool,
    /// The certificate's subject CN, when the balancer sends it.
    pub common_name: Option<String>,
    /// The TLS version, e.g. `TLSv1.3`.
    pub version: Option<String>,
}

/// Why a connection's first bytes are not a usable PROXY version 2 header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes do not start with the signature.
    #[error("not a PROXY protocol v2 header")]
    NotProxy,
    /// A version other than 2.
    #[error("PROXY protocol version {0} is not supported (only 2)")]
    UnsupportedVersion(u8),
    /// Longer than [`MAX_LENGTH`].
    #[error("PROXY header of {0} bytes is too long (at most {MAX_LENGTH})")]
    TooLong(usize),
    /// Inconsistent lengths or an unknown command.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// The connection failed or closed before the header was complete.
    #[error("connection failed while reading the PROXY header: {0}")]
    Io(String),
}

/// The number of bytes that follow the fixed part, from the fixed part.
pub fn header_length(fixed: &[u8; FIXED_LENGTH]) -> Result<usize, ProxyError> {
    if fixed[..12] != SIGNATURE {
        return Err(ProxyError::NotProxy);
    }
    let version = fixed[12] >> 4;
    if version != 2 {
        return Err(ProxyError::UnsupportedVersion(version));
    }
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if length > MAX_LENGTH {
        return Err(ProxyError::TooLong(length));
    }
    Ok(length)
}

/// Parses a header: its fixed part and the `header_length` bytes after it.
pub fn parse(fixed: &[u8; FIXED_LENGTH], rest: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let length = header_length(fixed)?;
    if rest.len() != length {
        return Err(ProxyError::Malformed(
            "length does not match the bytes given",
        ));
    }
    let command = fixed[12] & 0x0f;
    let family = fixed[13] >> 4;
    let (source, tlvs) = match (command, family) {
        // LOCAL: the balancer speaking for itself; addresses, if any, are ignored.
        (0x0, _) => (None, &rest[rest.len()..]),
        (0x1, 0x1) => {
            let addresses = rest
                .get(..12)
                .ok_or(ProxyError::Malformed("IPv4 addresses cut short"))?;
            let ip = Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3]);
            let port = u16::from_be_bytes([addresses[8], addresses[9]]);
            (Some(SocketAddr::new(IpAddr::V4(ip), port)), &rest[12..])
        }
        (0x1, 0x2) => {
            let addresses = rest
                .get(..36)
                .ok_or(ProxyError::Malformed("IPv6 addresses cut short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addresses[..16]);
            let port = u16::from_be_bytes([addresses[32], addresses[33]]);
            (
                Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)),
                &rest[36..],
            )
        }
        // UNSPEC or UNIX: no address the gateway can use; TLVs cannot be located after
        // UNIX addresses without parsing them, and are not needed.
        (0x1, _) => (None, &rest[rest.len()..]),
        _ => return Err(ProxyError::Malformed("unknown command")),
    };
    Ok(ProxyHeader {
        source,
        tls: ssl_tlv(tlvs)?,
    })
}

/// The `PP2_TYPE_SSL` TLV among `tlvs`, if any.
fn ssl_tlv(mut tlvs: &[u8]) -> Result<Option<ProxiedTls>, ProxyError> {
    while !tlvs.is_empty() {
        let (kind, value, rest) = tlv(tlvs)?;
        tlvs = rest;
        if kind != PP2_TYPE_SSL {
            continue;
        }
        let client = *value
            .first()
            .ok_or(ProxyError::Malformed("SSL TLV cut short"))?;
        let verify = value
            .get(1..5)
            .ok_or(ProxyError::Malformed("SSL TLV cut short"))?;
        if client & PP2_CLIENT_SSL == 0 {
            return Ok(None);
        }
        let presented = client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS) != 0;
        let mut ssl = ProxiedTls {
            certificate_verified: presented && verify == [0, 0, 0, 0],
            common_name: None,
            version: None,
        };
        let mut sub = &value[5..];
        while !sub.is_empty() {
            let (kind, value, rest) = tlv(sub)?;
            sub = rest;
            let text = || String::from_utf8(value.to_vec()).ok();
            match kind {
                PP2_SUBTYPE_SSL_CN => ssl.common_name = text(),
                PP2_SUBTYPE_SSL_VERSION => ssl.version = text(),
                _ => {}
            }
        }
        return Ok(Some(ssl));
    }
    Ok(None)
}

fn tlv(bytes: &[u8]) -> Result<(u8, &[u8], &[u8]), ProxyError> {
    let head = bytes
        .get(..3)
        .ok_or(ProxyError::Malformed("TLV cut short"))?;
    let length = usize::from(u16::from_be_bytes([head[1], head[2]]));
    let value = bytes
        .get(3..3 + length)
        .ok_or(ProxyError::Malformed("TLV longer than the header"))?;
    Ok((head[0], value, &bytes[3 + length..]))
}

/// Reads exactly one header from `stream`; nothing after it is consumed.
pub async fn read(stream: &mut (impl AsyncRead + Unpin)) -> Result<ProxyHeader, ProxyError> {
    let io = |e: std::io::Error| ProxyError::Io(e.to_string());
    let mut fixed = [0u8; FIXED_LENGTH];
    stream.read_exact(&mut fixed).await.map_err(io)?;
    let length = header_length(&fixed)?;
    let mut rest = vec![0u8; length];
    stream.read_exact(&mut rest).await.map_err(io)?;
    parse(&fixed, &rest)
}

/// A version 2 header, as a balancer sends it (for tests and tools).
pub fn encode(source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut header = SIGNATURE.to_vec();
    header.push(0x21);
    let addresses = match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            header.push(0x11);
            [
                &s.ip().octets()[..],
                &d.ip().octets()[..],
                &s.port().to_be_bytes(),
                &d.port().to_be_bytes(),
            ]
            .concat()
        }
        (s, d) => {
            header.push(0x21);
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            [
                &v6(s).octets()[..],
                &v6(d).octets()[..],
                &s.port().to_be_bytes(),
                &d.port().to_be_bytes(),
            ]
            .concat()
        }
    };
    let length = u16::try_from(addresses.len() + tlvs.len()).unwrap_or(u16::MAX);
    header.extend_from_slice(&length.to_be_bytes());
    header.extend_from_slice(&addresses);
    header.extend_from_slice(tlvs);
    header
}

/// The `PP2_TYPE_SSL` TLV a balancer sends for a client whose certificate it verified,
/// with its CN (for tests and tools).
pub fn encode_ssl_tlv(common_name: Option<&str>, verified: bool) -> Vec<u8> {
    let mut value = vec![
        PP2_CLIENT_SSL
            | if common_name.is_some() {
                PP2_CLIENT_CERT_CONN
            } else {
                0
            },
    ];
    value.extend_from_slice(&(if verified { 0u32 } else { 1 }).to_be_bytes());
    let mut sub = |kind: u8, text: &[u8]| {
        value.push(kind);
        value.extend_from_slice(&u16::try_from(text.len()).unwrap_or(0).to_be_bytes());
        value.extend_from_slice(text);
    };
    sub(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3");
    if let Some(name) = common_name {
        sub(PP2_SUBTYPE_SSL_CN, name.as_bytes());
    }
    let mut tlv = vec![PP2_TYPE_SSL];
    tlv.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_be_bytes());
    tlv.extend_from_slice(&value);
    tlv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(header: &[u8]) -> ([u8; FIXED_LENGTH], &[u8]) {
        let mut fixed = [0u8; FIXED_LENGTH];
        fixed.copy_from_slice(&header[..FIXED_LENGTH]);
        (fixed, &header[FIXED_LENGTH..])
    }

    #[test]
    fn an_ipv4_header_gives_the_client_address() {
        let client: SocketAddr = "198.51.100.7:40123".parse().unwrap();
        let header = encode(client, "10.0.0.1:8080".parse().unwrap(), &[]);
        let (fixed, rest) = split(&header);
        assert_eq!(header_length(&fixed), Ok(12));
        assert_eq!(
            parse(&fixed, rest),
            Ok(ProxyHeader {
                source: Some(client),
                tls: None
            })
        );
    }

    #[test]
    fn an_ipv6_header_gives_the_client_address() {
        let client: SocketAddr = "[2001:db8::7]:443".parse().unwrap();
        let header = encode(client, "[2001:db8::1]:8080".parse().unwrap(), &[]);
        let (fixed, rest) = split(&header);
        assert_eq!(parse(&fixed, rest).unwrap().source, Some(client));
    }

    #[test]
    fn the_ssl_tlv_carries_the_verified_certificates_cn() {
        let tlv = encode_ssl_tlv(Some("CP-3"), true);
        let header = encode(
            "198.51.100.7:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
            &[&[0x04, 0, 2, 0xaa, 0xbb][..], &tlv].concat(),
        );
        let (fixed, rest) = split(&header);
        let tls = parse(&fixed, rest).unwrap().tls.unwrap();
        assert!(tls.certificate_verified);
        assert_eq!(tls.common_name.as_deref(), Some("CP-3"));
        assert_eq!(tls.version.as_deref(), Some("TLSv1.3"));
        let unverified = encode_ssl_tlv(Some("CP-3"), false);
        let header = encode(
            "198.51.100.7:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
            &unverified,
        );
        let (fixed, rest) = split(&header);
        assert!(
            !parse(&fixed, rest)
                .unwrap()
                .tls
                .unwrap()
                .certificate_verified
        );
    }

    #[test]
    fn a_local_header_has_no_client() {
        let mut header = encode(
            "198.51.100.7:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
            &[],
        );
        header[12] = 0x20;
        let (fixed, rest) = split(&header);
        assert_eq!(parse(&fixed, rest).unwrap().source, None);
    }

    #[test]
    fn what_is_not_a_v2_header_is_refused() {
        let mut fixed = [0u8; FIXED_LENGTH];
        fixed[..16].copy_from_slice(b"GET /ocpp/CP-1 H");
        assert_eq!(header_length(&fixed), Err(ProxyError::NotProxy));
        let mut fixed = [0u8; FIXED_LENGTH];
        fixed[..12].copy_from_slice(&SIGNATURE);
        fixed[12] = 0x11;
        assert_eq!(
            header_length(&fixed),
            Err(ProxyError::UnsupportedVersion(1))
        );
        fixed[12] = 0x21;
        fixed[14..].copy_from_slice(&4000u16.to_be_bytes());
        assert_eq!(header_length(&fixed), Err(ProxyError::TooLong(4000)));
        fixed[14..].copy_from_slice(&3u16.to_be_bytes());
        fixed[13] = 0x11;
        assert!(matches!(
            parse(&fixed, &[1, 2, 3]),
            Err(ProxyError::Malformed(_))
        ));
        fixed[12] = 0x25;
        assert!(matches!(
            parse(&fixed, &[1, 2, 3]),
            Err(ProxyError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn reading_stops_at_the_end_of_the_header() {
        let header = encode(
            "198.51.100.7:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
            &[],
        );
        let mut bytes: &[u8] = &[&header[..], b"GET / HTTP/1.1\r\n"].concat();
        let parsed = read(&mut bytes).await.unwrap();
        assert_eq!(parsed.source, Some("198.51.100.7:1".parse().unwrap()));
        assert_eq!(bytes, b"GET / HTTP/1.1\r\n");
        let mut short: &[u8] = &header[..20];
        assert!(matches!(read(&mut short).await, Err(ProxyError::Io(_))));
    }
}
