//! The credential store shared by the nodes of a cluster, in Redis
//! (`auth.credentials_store = "redis"`): one node's change (admin API, rotation) is seen
//! by every node within `auth.reload_interval`.
//!
//! Lookups stay memory reads: each node keeps every record, and reads them all again
//! when the version counter in Redis moved. A change is compare-and-set against the
//! record as Redis has it, so two nodes changing one record do not overwrite each other.
//! While Redis does not answer, lookups use the records last read and changes fail.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::redis_registry::{RedisRegistry, RegistryError};
use crate::auth::{
    metrics::AuthMetrics,
    store::{record_from_json, record_to_json, Change, ChangeFn, FileStore, StoreError},
    CredentialRecord, CredentialStore,
};

/// Credential records in Redis, with a copy in memory.
pub struct RedisCredentialStore {
    registry: Arc<RedisRegistry>,
    max_id_length: usize,
    records: RwLock<HashMap<String, Arc<CredentialRecord>>>,
    version: Mutex<Option<u64>>,
}

fn shared(e: RegistryError) -> StoreError {
    StoreError::Shared(e.to_string())
}

impl RedisCredentialStore {
    /// The store in the cluster's Redis (through this node's `registry`), read once; with `import`, the file's records
    /// that Redis does not have yet are copied in first (a migration from the file).
    /// While Redis does not answer, the store starts empty (every charge point is
    /// refused, or let in unsecured, as `auth.unknown_charge_points` says) and is read
    /// as soon as Redis answers.
    pub async fn open(
        registry: Arc<RedisRegistry>,
        max_id_length: usize,
        import: Option<&FileStore>,
    ) -> Result<RedisCredentialStore, StoreError> {
        let store = RedisCredentialStore {
            registry,
            max_id_length,
            records: RwLock::default(),
            version: Mutex::default(),
        };
        let loaded = async {
            if let Some(file) = import {
                store.import(file).await?;
            }
            store.reload().await
        };
        if let Err(e) = loaded.await {
            warn!(error = %e, "credentials not read from Redis at start; no charge point authenticates until they are");
        }
        Ok(store)
    }

    async fn import(&self, file: &FileStore) -> Result<(), StoreError> {
        let mut imported = 0;
        for record in file.records() {
            let line = record_to_json(&record);
            if self
                .registry
                .set_credential(&record.id, None, Some(&line))
                .await
                .map_err(shared)?
            {
                imported += 1;
            }
        }
        info!(
            imported,
            "credential records imported from auth.credentials_file into Redis"
        );
        Ok(())
    }

    /// Reads every record again if another node changed one; returns whether it did.
    /// A record that does not parse is skipped (and logged), the others are used.
    pub async fn reload(&self) -> Result<bool, StoreError> {
        let version = self.registry.credentials_version().await.map_err(shared)?;
        if *self.version.lock() == Some(version) {
            return Ok(false);
        }
        let (version, lines) = self.registry.credentials().await.map_err(shared)?;
        let mut records = HashMap::with_capacity(lines.len());
        for (id, line) in lines {
            match record_from_json(&line, self.max_id_length) {
                Ok((_, Some(record))) if record.id == id => {
                    records.insert(id, Arc::new(record));
                }
                Ok(_) => warn!(%id, "credential record in Redis names another id; skipped"),
                Err(reason) => {
                    warn!(%id, %reason, "credential record in Redis is invalid; skipped")
                }
            }
        }
        *self.records.write() = records;
        *self.version.lock() = Some(version);
        Ok(true)
    }

    /// Reads the records again every `interval` until `stop`, when they changed.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        metrics: AuthMetrics,
        stop: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.reload().await {
                Ok(false) => {}
                Ok(true) => metrics.reloaded(true, self.len()),
                Err(e) => {
                    metrics.reloaded(false, self.len());
                    crate::warn_limited!(error = %e, "credentials not read again from Redis; the records last read stay in force");
                }
            }
        }
    }

    /// Decides the change on the record as Redis has it now, and writes it only if the
    /// record is still that (compare-and-set): a concurrent change on another node makes
    /// this one fail rather than be overwritten or overwrite it.
    async fn change(&self, id: String, change: ChangeFn) -> Result<bool, StoreError> {
        let current_line = self.registry.credential(&id).await.map_err(shared)?;
        let current = match &current_line {
            Some(line) => {
                record_from_json(line, self.max_id_length)
                    .map_err(StoreError::Shared)?
                    .1
            }
            None => None,
        };
        let decided = change(current.as_ref());
        let new_line = match &decided {
            Change::Keep => return Ok(false),
            Change::Set(record) => {
                record.check().map_err(StoreError::Shared)?;
                Some(record_to_json(record))
            }
            Change::Remove if current.is_none() => return Ok(false),
            Change::Remove => None,
        };
        let written = self
            .registry
            .set_credential(&id, current_line.as_deref(), new_line.as_deref())
            .await
            .map_err(shared)?;
        if !written {
            return Err(StoreError::Shared(format!(
                "the record of {id} changed on another node meanwhile; try again"
            )));
        }
        let mut records = self.records.write();
        match decided {
            Change::Set(record) => {
                records.insert(id, Arc::new(record));
            }
            _ => {
                records.remove(&id);
            }
        }
        Ok(true)
    }
}

impl CredentialStore for RedisCredentialStore {
    fn get(&self, id: &str) -> Option<Arc<CredentialRecord>> {
        self.records.read().get(id).cloned()
    }

    fn update(&self, id: String, change: ChangeFn) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.change(id, change))
    }

    fn len(&self) -> usize {
        self.records.read().len()
    }
}
