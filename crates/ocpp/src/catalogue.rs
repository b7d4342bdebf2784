//! Which OCPP actions exist in each version, and who may initiate them.
//!
//! The schemas say which actions exist; they do not say who sends them. This table does,
//! from the OCPP specifications: it decides which actions a charge point may CALL (and the
//! local responder must answer) and which the backend may send as commands.

use crate::OcppVersion;

/// Who may send an action as a CALL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// Only the charge point (e.g. `BootNotification`).
    ChargePoint,
    /// Only the CSMS (e.g. `Reset`).
    Csms,
    /// Either side (`DataTransfer`).
    Both,
}

impl Initiator {
    /// Whether a charge point may send this action.
    pub fn charge_point_may_send(self) -> bool {
        matches!(self, Initiator::ChargePoint | Initiator::Both)
    }

    /// Whether the CSMS (and so the gateway, on its behalf) may send this action.
    pub fn csms_may_send(self) -> bool {
        matches!(self, Initiator::Csms | Initiator::Both)
    }
}

const V16_CHARGE_POINT: &[&str] = &[
    "Authorize",
    "BootNotification",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "LogStatusNotification",
    "MeterValues",
    "SecurityEventNotification",
    "SignCertificate",
    "SignedFirmwareStatusNotification",
    "StartTransaction",
    "StatusNotification",
    "StopTransaction",
];

const V16_CSMS: &[&str] = &[
    "CancelReservation",
    "CertificateSigned",
    "ChangeAvailability",
    "ChangeConfiguration",
    "ClearCache",
    "ClearChargingProfile",
    "DeleteCertificate",
    "ExtendedTriggerMessage",
    "GetCompositeSchedule",
    "GetConfiguration",
    "GetDiagnostics",
    "GetInstalledCertificateIds",
    "GetLocalListVersion",
    "GetLog",
    "InstallCertificate",
    "RemoteStartTransaction",
    "RemoteStopTransaction",
    "ReserveNow",
    "Reset",
    "SendLocalList",
    "SetChargingProfile",
    "SignedUpdateFirmware",
    "TriggerMessage",
    "UnlockConnector",
    "UpdateFirmware",
];

const V201_CHARGE_POINT: &[&str] = &[
    "Authorize",
    "BootNotification",
    "ClearedChargingLimit",
    "FirmwareStatusNotification",
    "Get15118EVCertificate",
    "GetCertificateStatus",
    "Heartbeat",
    "LogStatusNotification",
    "MeterValues",
    "NotifyChargingLimit",
    "NotifyCustomerInformation",
    "NotifyDisplayMessages",
    "NotifyEVChargingNeeds",
    "NotifyEVChargingSchedule",
    "NotifyEvent",
    "NotifyMonitoringReport",
    "NotifyReport",
    "PublishFirmwareStatusNotification",
    "ReportChargingProfiles",
    "ReservationStatusUpdate",
    "SecurityEventNotification",
    "SignCertificate",
    "StatusNotification",
    "TransactionEvent",
];

const V201_CSMS: &[&str] = &[
    "CancelReservation",
    "CertificateSigned",
    "ChangeAvailability",
    "ClearCache",
    "ClearChargingProfile",
    "ClearDisplayMessage",
    "ClearVariableMonitoring",
    "CostUpdated",
    "CustomerInformation",
    "DeleteCertificate",
    "GetBaseReport",
    "GetChargingProfiles",
    "GetCompositeSchedule",
    "GetDisplayMessages",
    "GetInstalledCertificateIds",
    "GetLocalListVersion",
    "GetLog",
    "GetMonitoringReport",
    "GetReport",
    "GetTransactionStatus",
    "GetVariables",
    "InstallCertificate",
    "PublishFirmware",
    "RequestStartTransaction",
    "RequestStopTransaction",
    "ReserveNow",
    "Reset",
    "SendLocalList",
    "SetChargingProfile",
    "SetDisplayMessage",
    "SetMonitoringBase",
    "SetMonitoringLevel",
    "SetNetworkProfile",
    "SetVariableMonitoring",
    "SetVariables",
    "TriggerMessage",
    "UnlockConnector",
    "UnpublishFirmware",
    "UpdateFirmware",
];

/// Charge-point-initiated actions new in 2.1 (besides all of 2.0.1's).
const V21_CHARGE_POINT_ADDED: &[&str] = &[
    "BatterySwap",
    "ClosePeriodicEventStream",
    "GetCertificateChainStatus",
    "NotifyDERAlarm",
    "NotifyDERStartStop",
    "NotifyPeriodicEventStream",
    "NotifyPriorityCharging",
    "NotifySettlement",
    "OpenPeriodicEventStream",
    "PullDynamicScheduleUpdate",
    "ReportDERControl",
    "VatNumberValidation",
];

/// CSMS-initiated actions new in 2.1 (besides all of 2.0.1's).
const V21_CSMS_ADDED: &[&str] = &[
    "AFRRSignal",
    "AdjustPeriodicEventStream",
    "ChangeTransactionTariff",
    "ClearDERControl",
    "ClearTariffs",
    "GetDERControl",
    "GetPeriodicEventStream",
    "GetTariffs",
    "NotifyAllowedEnergyTransfer",
    "NotifyWebPaymentStarted",
    "RequestBatterySwap",
    "SetDERControl",
    "SetDefaultTariff",
    "UpdateDynamicSchedule",
    "UsePriorityCharging",
];

/// Who may initiate `action` in `version`; `None` when the version has no such action.
pub fn initiator(version: OcppVersion, action: &str) -> Option<Initiator> {
    if action == "DataTransfer" {
        return Some(Initiator::Both);
    }
    let (cp, csms, cp_added, csms_added): (&[&str], &[&str], &[&str], &[&str]) = match version {
        OcppVersion::V16 => (V16_CHARGE_POINT, V16_CSMS, &[], &[]),
        OcppVersion::V201 => (V201_CHARGE_POINT, V201_CSMS, &[], &[]),
        OcppVersion::V21 => (
            V201_CHARGE_POINT,
            V201_CSMS,
            V21_CHARGE_POINT_ADDED,
            V21_CSMS_ADDED,
        ),
    };
    if cp.contains(&action) || cp_added.contains(&action) {
        Some(Initiator::ChargePoint)
    } else if csms.contains(&action) || csms_added.contains(&action) {
        Some(Initiator::Csms)
    } else {
        None
    }
}

/// Whether `action` is only ever sent as a 2.1 SEND (message type 6), never as a CALL.
pub fn is_send_only(version: OcppVersion, action: &str) -> bool {
    version == OcppVersion::V21 && action == "NotifyPeriodicEventStream"
}

/// Every action of `version`, each once, charge-point-initiated first.
pub fn actions(version: OcppVersion) -> Vec<&'static str> {
    let mut all: Vec<&'static str> = vec!["DataTransfer"];
    match version {
        OcppVersion::V16 => {
            all.extend(V16_CHARGE_POINT);
            all.extend(V16_CSMS);
        }
        OcppVersion::V201 => {
            all.extend(V201_CHARGE_POINT);
            all.extend(V201_CSMS);
        }
        OcppVersion::V21 => {
            all.extend(V201_CHARGE_POINT);
            all.extend(V21_CHARGE_POINT_ADDED);
            all.extend(V201_CSMS);
            all.extend(V21_CSMS_ADDED);
        }
    }
    all
}

/// The catalogue's own `'static` spelling of `action`, for labels from a closed set.
/// (On the hot path: searches the static tables without allocating.)
pub fn known_action(version: OcppVersion, action: &str) -> Option<&'static str> {
    if action == "DataTransfer" {
        return Some("DataTransfer");
    }
    let tables: &[&[&'static str]] = match version {
        OcppVersion::V16 => &[V16_CHARGE_POINT, V16_CSMS],
        OcppVersion::V201 => &[V201_CHARGE_POINT, V201_CSMS],
        OcppVersion::V21 => &[
            V201_CHARGE_POINT,
            V21_CHARGE_POINT_ADDED,
            V201_CSMS,
            V21_CSMS_ADDED,
        ],
    };
    tables
        .iter()
        .flat_map(|table| table.iter())
        .find(|known| **known == action)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions() {
        use OcppVersion::*;
        assert_eq!(
            initiator(V16, "BootNotification"),
            Some(Initiator::ChargePoint)
        );
        assert_eq!(
            initiator(V16, "RemoteStartTransaction"),
            Some(Initiator::Csms)
        );
        assert_eq!(initiator(V16, "TransactionEvent"), None);
        assert_eq!(
            initiator(V201, "TransactionEvent"),
            Some(Initiator::ChargePoint)
        );
        assert_eq!(initiator(V201, "BatterySwap"), None);
        assert_eq!(initiator(V21, "BatterySwap"), Some(Initiator::ChargePoint));
        assert_eq!(initiator(V21, "RequestBatterySwap"), Some(Initiator::Csms));
        assert_eq!(initiator(V21, "DataTransfer"), Some(Initiator::Both));
        assert!(Initiator::Both.charge_point_may_send() && Initiator::Both.csms_may_send());
    }

    #[test]
    fn known_action_agrees_with_the_list() {
        for v in OcppVersion::ALL {
            for action in actions(v) {
                assert_eq!(known_action(v, action), Some(action));
            }
            assert_eq!(known_action(v, "Nope"), None);
        }
        assert_eq!(known_action(OcppVersion::V16, "TransactionEvent"), None);
    }

    #[test]
    fn actions_are_unique() {
        for v in OcppVersion::ALL {
            let mut all = actions(v);
            let n = all.len();
            all.sort();
            all.dedup();
            assert_eq!(all.len(), n, "{v}");
        }
    }
}
