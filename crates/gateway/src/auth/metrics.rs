//! Authentication's metrics: results by profile, and the credential store.

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use crate::{
    labels::{AuthResult, SecurityProfile},
    metrics::{MetricsRegistry, ProfileResultLabels, ResultLabels},
};

/// What authentication counts.
#[derive(Clone, Default)]
pub struct AuthMetrics {
    results: Family<ProfileResultLabels, Counter>,
    credential_reloads: Family<ResultLabels, Counter>,
    credential_records: Gauge,
}

impl AuthMetrics {
    /// Registers the metrics in `r`, every series at 0.
    pub fn register(r: &mut MetricsRegistry) -> AuthMetrics {
        let m = AuthMetrics::default();
        r.add(
            "ocppgw_auth_results",
            "Charge point authentication results by required profile and result",
            m.results.clone(),
        );
        r.add(
            "ocppgw_credential_reloads",
            "Reads of the credentials file after a change, by result",
            m.credential_reloads.clone(),
        );
        r.add(
            "ocppgw_credential_records",
            "Charge point credential records in the store",
            m.credential_records.clone(),
        );
        for profile in SecurityProfile::ALL {
            for result in AuthResult::ALL {
                let _ = m.results.get_or_create(&ProfileResultLabels {
                    profile: profile.as_str(),
                    result: result.as_str(),
                });
            }
        }
        for result in ["ok", "error"] {
            let _ = m.credential_reloads.get_or_create(&ResultLabels { result });
        }
        m
    }

    /// Counts one authentication result.
    pub fn result(&self, profile: SecurityProfile, result: AuthResult) {
        self.results
            .get_or_create(&ProfileResultLabels {
                profile: profile.as_str(),
                result: result.as_str(),
            })
            .inc();
    }

    /// Counts one read of a changed credentials file, and the records it holds.
    pub fn reloaded(&self, ok: bool, records: usize) {
        let result = if ok { "ok" } else { "error" };
        self.credential_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
        self.records(records);
    }

    /// Sets the number of records.
    pub fn records(&self, records: usize) {
        self.credential_records
            .set(i64::try_from(records).unwrap_or(i64::MAX));
    }
}
