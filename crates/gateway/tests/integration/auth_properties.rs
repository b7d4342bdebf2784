//! Property tests of the `Authorization: Basic` parser, which reads what any client
//! sends before it is authenticated: every input is parsed or refused, never a panic,
//! and credentials survive encoding unchanged. Failing cases proptest finds are kept in
//! `auth_properties.proptest-regressions` and replayed first.

use charge_point_gateway::auth::basic::{BasicCredentials, BasicError, MAX_AUTHORIZATION_LENGTH};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_header_value_is_parsed_or_refused(value in prop::collection::vec(any::<u8>(), 0..1200)) {
        match BasicCredentials::parse(&value) {
            Ok(credentials) => {
                prop_assert!(value.len() <= MAX_AUTHORIZATION_LENGTH);
                prop_assert!(!credentials.username.contains(':'));
            }
            Err(BasicError::TooLong) => prop_assert!(value.len() > MAX_AUTHORIZATION_LENGTH),
            Err(_) => {}
        }
    }

    #[test]
    fn basic_looking_values_are_parsed_or_refused(token in "[A-Za-z0-9+/=: \t]{0,200}", scheme in "(?i)basic|bearer|") {
        let value = format!("{scheme} {token}");
        let _ = BasicCredentials::parse(value.as_bytes());
    }

    #[test]
    fn credentials_survive_encoding(
        username in "[^:\u{0}]{0,60}",
        password in prop::collection::vec(any::<u8>(), 0..60),
    ) {
        let credentials = BasicCredentials { username, password };
        let parsed = BasicCredentials::parse(credentials.to_header_value().as_bytes());
        prop_assert_eq!(parsed, Ok(credentials));
    }
}
