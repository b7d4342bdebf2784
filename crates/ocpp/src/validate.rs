//! Payload validation against the official OCPP JSON schemas, compiled once at start.

use std::{cell::Cell, collections::HashMap, sync::Arc};

use jsonschema::{error::ValidationErrorKind, Validator};
use serde_json::Value;

use crate::{catalogue, ErrorCode, OcppVersion};

include!(concat!(env!("OUT_DIR"), "/schemas.rs"));

/// Whether a payload is a request (CALL / SEND) or a response (CALLRESULT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// The payload of a CALL or SEND.
    Request,
    /// The payload of a CALLRESULT.
    Response,
}

/// How strictly field quirks seen in deployed charge points are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leniency {
    /// Accept `date-time` values without a time zone (read as UTC). Many charge points
    /// send them; the strict RFC 3339 check would reject every such message.
    pub timestamps_without_zone: bool,
}

impl Default for Leniency {
    fn default() -> Self {
        Self {
            timestamps_without_zone: true,
        }
    }
}

/// A successful validation, with what leniency had to forgive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Validated {
    /// How many `date-time` values had no time zone and were read as UTC.
    pub timestamps_without_zone: u32,
}

/// One schema violation, located in the payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ViolationDetail {
    /// JSON pointer to the offending value in the payload (`""` for the root).
    #[serde(rename = "instancePath")]
    pub instance_path: String,
    /// What is wrong there.
    pub message: String,
}

/// A payload that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{description}")]
pub struct Violation {
    /// The OCPP error code the first violation maps to.
    pub code: ErrorCode,
    /// A short description for the CALLERROR (the first violation).
    pub description: String,
    /// Every violation found.
    pub details: Vec<ViolationDetail>,
}

/// The compiled validators for every action of every version, by version and kind, then
/// by action (so that a lookup by `&str` allocates nothing).
pub struct SchemaSet {
    validators: HashMap<(OcppVersion, PayloadKind), HashMap<String, Arc<Validator>>>,
}

/// A schema that failed to compile (a build defect, reported at start).
#[derive(Debug, thiserror::Error)]
#[error("OCPP schema {version}/{file} does not compile: {message}")]
pub struct SchemaCompileError {
    /// Version folder of the schema.
    pub version: String,
    /// File stem of the schema.
    pub file: String,
    /// The compiler's message.
    pub message: String,
}

thread_local! {
    static ZONELESS_TIMESTAMPS: Cell<u32> = const { Cell::new(0) };
}

fn is_rfc3339(value: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(value).is_ok()
}

fn lenient_date_time(value: &str) -> bool {
    if is_rfc3339(value) {
        return true;
    }
    let zoneless = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .any(|format| chrono::NaiveDateTime::parse_from_str(value, format).is_ok());
    if zoneless {
        ZONELESS_TIMESTAMPS.with(|count| count.set(count.get() + 1));
    }
    zoneless
}

fn split_stem(folder: &str, stem: &str) -> (String, PayloadKind) {
    if let Some(action) = stem.strip_suffix("Response") {
        return (action.to_owned(), PayloadKind::Response);
    }
    let action = match folder {
        "v16" => stem,
        _ => stem.strip_suffix("Request").unwrap_or(stem),
    };
    (action.to_owned(), PayloadKind::Request)
}

impl SchemaSet {
    /// Compiles every embedded schema. Takes a few hundred milliseconds; do it once.
    pub fn compile(leniency: Leniency) -> Result<Self, SchemaCompileError> {
        let mut validators = HashMap::new();
        for (folder, stem, text) in EMBEDDED_SCHEMAS {
            let version = OcppVersion::ALL
                .into_iter()
                .find(|v| v.schema_folder() == *folder)
                .expect("build.rs only embeds known version folders");
            let compile_error = |message: String| SchemaCompileError {
                version: folder.to_string(),
                file: stem.to_string(),
                message,
            };
            let schema: Value =
                serde_json::from_str(text).map_err(|e| compile_error(e.to_string()))?;
            let mut options = jsonschema::options().should_validate_formats(true);
            options = if leniency.timestamps_without_zone {
                options.with_format("date-time", lenient_date_time)
            } else {
                options.with_format("date-time", is_rfc3339)
            };
            let validator = options
                .build(&schema)
                .map_err(|e| compile_error(e.to_string()))?;
            let (action, kind) = split_stem(folder, stem);
            validators
                .entry((version, kind))
                .or_insert_with(HashMap::new)
                .insert(action, Arc::new(validator));
        }
        Ok(Self { validators })
    }

    /// Whether `version` has a schema for `action` (i.e. the action exists).
    pub fn knows(&self, version: OcppVersion, action: &str) -> bool {
        self.validator(version, action, PayloadKind::Request)
            .is_some()
    }

    fn validator(
        &self,
        version: OcppVersion,
        action: &str,
        kind: PayloadKind,
    ) -> Option<&Arc<Validator>> {
        self.validators.get(&(version, kind))?.get(action)
    }

    /// Validates `payload` as the `kind` payload of `action` in `version`.
    ///
    /// Returns `None` when the version has no such action.
    pub fn validate(
        &self,
        version: OcppVersion,
        action: &str,
        kind: PayloadKind,
        payload: &Value,
    ) -> Option<Result<Validated, Violation>> {
        let validator = self.validator(version, action, kind)?;
        ZONELESS_TIMESTAMPS.with(|count| count.set(0));
        // The usual case, a valid payload, is answered without building error reports.
        if validator.is_valid(payload) {
            return Some(Ok(Validated {
                timestamps_without_zone: ZONELESS_TIMESTAMPS.with(|count| count.replace(0)),
            }));
        }
        ZONELESS_TIMESTAMPS.with(|count| count.set(0));
        let details: Vec<(ErrorCode, ViolationDetail)> = validator
            .iter_errors(payload)
            .map(|error| {
                let code = classify(error.kind());
                let detail = ViolationDetail {
                    instance_path: error.instance_path().to_string(),
                    message: error.to_string(),
                };
                (code, detail)
            })
            .collect();
        let zoneless = ZONELESS_TIMESTAMPS.with(|count| count.replace(0));
        let Some((code, first)) = details.first().cloned() else {
            return Some(Ok(Validated {
                timestamps_without_zone: zoneless,
            }));
        };
        let description = if first.instance_path.is_empty() {
            first.message.clone()
        } else {
            format!("{}: {}", first.instance_path, first.message)
        };
        Some(Err(Violation {
            code,
            description,
            details: details.into_iter().map(|(_, d)| d).collect(),
        }))
    }

    /// Every (version, action) pair with a request schema.
    pub fn actions(&self) -> impl Iterator<Item = (OcppVersion, &str)> {
        self.validators
            .iter()
            .filter(|((_, kind), _)| *kind == PayloadKind::Request)
            .flat_map(|((version, _), actions)| {
                actions
                    .keys()
                    .map(move |action| (*version, action.as_str()))
            })
    }
}

/// Maps a schema violation to the OCPP error code that names it.
///
/// Type mismatches are `TypeConstraintViolation`; missing fields and wrong item counts are
/// occurrence violations; fields the PDU does not define are a format (1.6: formation)
/// violation; a value outside its enum, length, range or pattern is a
/// `PropertyConstraintViolation`.
fn classify(kind: &ValidationErrorKind) -> ErrorCode {
    use ValidationErrorKind as K;
    match kind {
        K::Type { .. } => ErrorCode::TypeConstraintViolation,
        K::Required { .. }
        | K::MinItems { .. }
        | K::MaxItems { .. }
        | K::AdditionalItems { .. } => ErrorCode::OccurrenceConstraintViolation,
        K::AdditionalProperties { .. }
        | K::UnevaluatedProperties { .. }
        | K::FalseSchema
        | K::PropertyNames { .. } => ErrorCode::FormatViolation,
        _ => ErrorCode::PropertyConstraintViolation,
    }
}

/// Whether `action` is defined for `version` by both the catalogue and the schemas.
pub fn action_exists(schemas: &SchemaSet, version: OcppVersion, action: &str) -> bool {
    schemas.knows(version, action) && catalogue::initiator(version, action).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::OnceLock;
    use OcppVersion::*;

    fn schemas() -> &'static SchemaSet {
        static SET: OnceLock<SchemaSet> = OnceLock::new();
        SET.get_or_init(|| SchemaSet::compile(Leniency::default()).expect("schemas compile"))
    }

    fn check(version: OcppVersion, action: &str, payload: Value) -> Result<Validated, Violation> {
        schemas()
            .validate(version, action, PayloadKind::Request, &payload)
            .expect("action exists")
    }

    #[test]
    fn catalogue_and_schemas_agree() {
        for version in OcppVersion::ALL {
            for action in catalogue::actions(version) {
                assert!(
                    schemas().knows(version, action),
                    "{version} {action} has no schema"
                );
                if action != "NotifyPeriodicEventStream" {
                    assert!(
                        schemas()
                            .validator(version, action, PayloadKind::Response)
                            .is_some(),
                        "{version} {action} has no response schema"
                    );
                }
            }
        }
        for (version, action) in schemas().actions() {
            assert!(
                catalogue::initiator(version, action).is_some(),
                "{version} {action} is missing from the catalogue"
            );
        }
    }

    #[test]
    fn valid_payloads_pass() {
        let boot16 = json!({"chargePointVendor": "V", "chargePointModel": "M"});
        assert!(check(V16, "BootNotification", boot16).is_ok());
        let boot2 =
            json!({"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}});
        assert!(check(V201, "BootNotification", boot2.clone()).is_ok());
        assert!(check(V21, "BootNotification", boot2).is_ok());
    }

    #[test]
    fn violations_map_to_codes() {
        let e = check(V16, "BootNotification", json!({"chargePointVendor": "V"})).unwrap_err();
        assert_eq!(e.code, ErrorCode::OccurrenceConstraintViolation);
        assert_eq!(e.code.as_str(V16), "OccurenceConstraintViolation");

        let e = check(
            V16,
            "BootNotification",
            json!({"chargePointVendor": 5, "chargePointModel": "M"}),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::TypeConstraintViolation);
        assert_eq!(e.details[0].instance_path, "/chargePointVendor");

        let e = check(
            V16,
            "BootNotification",
            json!({"chargePointVendor": "V".repeat(21), "chargePointModel": "M"}),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::PropertyConstraintViolation);

        let e = check(
            V201,
            "StatusNotification",
            json!({"timestamp": "2024-01-01T00:00:00Z", "connectorStatus": "Sleeping", "evseId": 1, "connectorId": 1}),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::PropertyConstraintViolation);

        let e = check(V201, "Heartbeat", json!({"extra": true})).unwrap_err();
        assert_eq!(e.code, ErrorCode::FormatViolation);
        assert_eq!(e.code.as_str(V201), "FormatViolation");
        assert_eq!(e.code.as_str(V16), "FormationViolation");
    }

    #[test]
    fn zoneless_timestamps_are_forgiven_and_counted() {
        let status = |ts: &str| json!({"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": ts});
        let ok = check(V16, "StatusNotification", status("2024-05-01T10:00:00Z")).unwrap();
        assert_eq!(ok.timestamps_without_zone, 0);
        let ok = check(V16, "StatusNotification", status("2024-05-01T10:00:00.123")).unwrap();
        assert_eq!(ok.timestamps_without_zone, 1);
        let e = check(V16, "StatusNotification", status("yesterday")).unwrap_err();
        assert_eq!(e.code, ErrorCode::PropertyConstraintViolation);

        let strict = SchemaSet::compile(Leniency {
            timestamps_without_zone: false,
        })
        .unwrap();
        let r = strict
            .validate(
                V16,
                "StatusNotification",
                PayloadKind::Request,
                &status("2024-05-01T10:00:00"),
            )
            .unwrap();
        assert!(r.is_err());
    }

    #[test]
    fn celcius_quirk_is_in_the_official_schema() {
        let meter = |unit: &str| {
            json!({"connectorId": 1, "meterValue": [{"timestamp": "2024-05-01T10:00:00Z",
                "sampledValue": [{"value": "21.5", "measurand": "Temperature", "unit": unit}]}]})
        };
        assert!(check(V16, "MeterValues", meter("Celcius")).is_ok());
        assert!(check(V16, "MeterValues", meter("Celsius")).is_ok());
        assert!(check(V16, "MeterValues", meter("Kelvinish")).is_err());
    }

    #[test]
    fn unknown_actions_have_no_validator() {
        assert!(schemas()
            .validate(V16, "TransactionEvent", PayloadKind::Request, &json!({}))
            .is_none());
        assert!(!action_exists(schemas(), V201, "NoSuchAction"));
    }
}
