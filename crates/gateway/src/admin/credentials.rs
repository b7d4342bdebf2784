//! `/api/v1/charge-points/{id}/credentials`: read, set, delete and rotate a charge
//! point's credentials. No response ever carries a password or a hash.

use std::sync::Arc;

use axum::{
    extract::{rejection::JsonRejection, Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error, AdminState};
use crate::{
    auth::{
        password::{PasswordHashString, ANY_VERSION_LENGTHS},
        rotation::{self, Rotated, RotationError},
        store::{Change, CredentialRecord},
        CredentialStore, SecurityProfile,
    },
    handshake::check_charge_point_id,
};

/// The body of `PUT /api/v1/charge-points/{id}/credentials`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CredentialsBody {
    profile: u8,
    /// A password to hash here (16 to 40 bytes).
    password: Option<String>,
    /// An argon2id PHC string hashed elsewhere.
    password_hash: Option<String>,
}

fn view(record: &CredentialRecord) -> Value {
    json!({
        "chargePointId": record.id,
        "profile": record.profile as u8,
        "passwordSet": record.password.is_some(),
        "previousPasswordValidUntil": record.previous_password.as_ref().map(|(_, until)| until),
    })
}

/// A refused request: its status and message, answered as `{"error": ...}`.
pub(super) struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn store_of(admin: &AdminState) -> Result<&Arc<dyn CredentialStore>, Refused> {
    admin.auth.store().ok_or_else(|| {
        Refused(
            StatusCode::CONFLICT,
            "authentication is off: set auth.credentials_file to keep credentials".to_owned(),
        )
    })
}

fn checked_id(admin: &AdminState, id: &str) -> Result<(), Refused> {
    check_charge_point_id(id, admin.max_charge_point_id_length)
        .map_err(|refusal| Refused(StatusCode::BAD_REQUEST, refusal.to_string()))
}

pub(super) async fn get_credentials(
    State(admin): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Response {
    let store = match store_of(&admin) {
        Ok(store) => store,
        Err(refused) => return refused.into_response(),
    };
    match store.get(&id) {
        Some(record) => Json(view(&record)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("charge point {id} has no credential record"),
        ),
    }
}

pub(super) async fn put_credentials(
    State(admin): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: Result<Json<CredentialsBody>, JsonRejection>,
) -> Response {
    let store = match store_of(&admin).and_then(|store| checked_id(&admin, &id).map(|()| store)) {
        Ok(store) => store.clone(),
        Err(refused) => return refused.into_response(),
    };
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let Ok(profile) = SecurityProfile::try_from(body.profile) else {
        return error(StatusCode::BAD_REQUEST, "profile must be 0, 1, 2 or 3");
    };
    let password = match (body.password, body.password_hash) {
        (Some(_), Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "give password or passwordHash, not both",
            )
        }
        (Some(password), None) => {
            if !ANY_VERSION_LENGTHS.contains(&password.len()) {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "password must be {} to {} bytes (OCPP 1.6: 16 to 20, 2.x: 16 to 40)",
                        ANY_VERSION_LENGTHS.start(),
                        ANY_VERSION_LENGTHS.end()
                    ),
                );
            }
            match admin.auth.hash_password(password.as_bytes()).await {
                Ok(hash) => Some(hash),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (None, Some(phc)) => match PasswordHashString::parse(&phc) {
            Ok(hash) => Some(hash),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("passwordHash: {e}")),
        },
        (None, None) => None,
    };
    let record = CredentialRecord {
        id: id.clone(),
        profile,
        password,
        previous_password: None,
    };
    if let Err(reason) = record.check() {
        return error(StatusCode::BAD_REQUEST, reason);
    }
    let stored = record.clone();
    match store
        .update(id.clone(), Box::new(move |_| Change::Set(stored)))
        .await
    {
        Ok(_) => {
            admin.auth.forget(&id);
            tracing::info!(charge_point_id = %id, profile = profile.as_str(), "credentials set through the admin API");
            Json(view(&record)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(super) async fn delete_credentials(
    State(admin): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Response {
    let store = match store_of(&admin) {
        Ok(store) => store.clone(),
        Err(refused) => return refused.into_response(),
    };
    match store.update(id.clone(), Box::new(|_| Change::Remove)).await {
        Ok(true) => {
            admin.auth.forget(&id);
            tracing::info!(charge_point_id = %id, "credentials deleted through the admin API");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("charge point {id} has no credential record"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(super) async fn rotate_credentials(
    State(admin): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Response {
    match rotation::rotate(&admin.auth, &admin.commander, &admin.sessions, &id).await {
        Ok(Rotated::Accepted {
            status,
            previous_valid_until,
        }) => Json(json!({
            "chargePointId": id,
            "result": "accepted",
            "chargePointStatus": status,
            "previousPasswordValidUntil": previous_valid_until,
        }))
        .into_response(),
        Ok(Rotated::Refused { reason }) => (
            StatusCode::CONFLICT,
            Json(json!({
                "chargePointId": id,
                "result": "refused",
                "error": reason,
            })),
        )
            .into_response(),
        Ok(Rotated::Unanswered { new_valid_until }) => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(json!({
                "chargePointId": id,
                "result": "unanswered",
                "error": "the charge point did not answer; the old password stays in force and the new one is accepted too until newPasswordValidUntil",
                "newPasswordValidUntil": new_valid_until,
            })),
        )
            .into_response(),
        Err(e @ RotationError::AuthOff) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ (RotationError::NoRecord(_) | RotationError::NotConnected(_))) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e @ RotationError::NoPassword { .. }) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ (RotationError::Store(_) | RotationError::Hashing(_))) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}
