//! Credential records, and where they are kept.
//!
//! [`CredentialStore`] is the contract: look a charge point's record up (a memory read,
//! on every handshake) and change one record at a time (durable when the future
//! resolves). [`FileStore`] keeps records in a JSON-lines file: one record per line, a
//! later line for the same id replacing an earlier one, a tombstone line deleting it.
//! Changes are appended and flushed to disk; the file is compacted when most of it is
//! superseded lines, and re-read when someone else changes it (a hand edit, a
//! provisioning tool), without touching open connections.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::{password::PasswordHashString, SecurityProfile};

/// What the gateway knows about one charge point's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    /// The charge point id.
    pub id: String,
    /// The security profile the charge point must connect with.
    pub profile: SecurityProfile,
    /// Its password (profiles 1 and 2).
    pub password: Option<PasswordHashString>,
    /// The password before the last rotation, still accepted until `previous_valid_until`
    /// or until the charge point has connected with the new one.
    pub previous_password: Option<(PasswordHashString, DateTime<Utc>)>,
}

/// One line of the file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    profile: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_password_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_valid_until: Option<DateTime<Utc>>,
    /// A tombstone: the id's record is deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

/// A record as one JSON line (the file's format; also how the Redis store keeps it).
pub fn record_to_json(record: &CredentialRecord) -> String {
    serde_json::to_string(&FileRecords::line_of(&record.id, Some(record))).unwrap_or_default()
}

/// The record one JSON line holds, checked (`None`: the line deletes the id's record).
pub fn record_from_json(
    text: &str,
    max_id_length: usize,
) -> Result<(String, Option<CredentialRecord>), String> {
    let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    record_of(line, max_id_length)
}

/// Why a record cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A line of the file is not a valid record.
    #[error("{path}:{line}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The file could not be read or written (internal).
    #[error("credentials file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The shared store (Redis) did not answer, or holds something unusable.
    #[error("credential store in Redis: {0}")]
    Shared(String),
}

/// What [`CredentialStore::update`] does with the record it was shown.
#[derive(Debug)]
pub enum Change {
    /// Leave it as it is.
    Keep,
    /// Store this record for the id.
    Set(CredentialRecord),
    /// Delete the id's record.
    Remove,
}

/// A function that decides a change from the current record (`None` when there is none).
pub type ChangeFn = Box<dyn FnOnce(Option<&CredentialRecord>) -> Change + Send>;

/// Where credential records live.
pub trait CredentialStore: Send + Sync + 'static {
    /// The record of charge point `id`, if any. A memory read: called on every handshake.
    fn get(&self, id: &str) -> Option<Arc<CredentialRecord>>;

    /// Changes the record of `id` as `change` decides from the current one, atomically
    /// with respect to other updates; resolves once the change is durable, with whether
    /// anything changed.
    fn update(&self, id: String, change: ChangeFn) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// How many records there are.
    fn len(&self) -> usize;

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What identifies a version of the file, to notice changes made by others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    modified: Option<SystemTime>,
    length: u64,
    inode: u64,
}

impl FileVersion {
    fn of(metadata: &fs::Metadata) -> FileVersion {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(metadata);
        #[cfg(not(unix))]
        let inode = 0;
        FileVersion {
            modified: metadata.modified().ok(),
            length: metadata.len(),
            inode,
        }
    }
}

type Records = HashMap<String, Arc<CredentialRecord>>;

/// The file and what was last read from or written to it.
struct FileState {
    version: Option<FileVersion>,
    /// Lines in the file, live or superseded: compaction is due when they are many more
    /// than the records.
    lines: usize,
}

/// Credential records in a JSON-lines file (see the module documentation).
pub struct FileStore(Arc<FileRecords>);

/// The records of a [`FileStore`] and its file.
struct FileRecords {
    path: PathBuf,
    max_id_length: usize,
    records: RwLock<Records>,
    file: Mutex<FileState>,
}

impl FileStore {
    /// Opens the store in `path`, which must exist (an empty file is a store with no
    /// records); ids longer than `max_id_length` are invalid.
    pub fn open(path: &Path, max_id_length: usize) -> Result<FileStore, StoreError> {
        let store = FileRecords {
            path: path.to_owned(),
            max_id_length,
            records: RwLock::new(Records::new()),
            file: Mutex::new(FileState {
                version: None,
                lines: 0,
            }),
        };
        store.reload()?;
        Ok(FileStore(Arc::new(store)))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Reads the file again if it changed since it was last read or written here; returns
    /// whether it did. On an invalid file the records stay as they were. Blocking I/O.
    pub fn reload(&self) -> Result<bool, StoreError> {
        self.0.reload()
    }

    /// Every record (for an import into another store).
    pub fn records(&self) -> Vec<Arc<CredentialRecord>> {
        self.0.records.read().values().cloned().collect()
    }
}

impl FileRecords {
    fn reload(&self) -> Result<bool, StoreError> {
        let mut file = self.file.lock();
        self.reload_locked(&mut file)
    }

    fn reload_locked(&self, file: &mut FileState) -> Result<bool, StoreError> {
        let metadata = fs::metadata(&self.path).map_err(|e| self.io(e))?;
        let version = FileVersion::of(&metadata);
        if file.version == Some(version) {
            return Ok(false);
        }
        let (records, lines) = self.read()?;
        *self.records.write() = records;
        *file = FileState {
            version: Some(version),
            lines,
        };
        Ok(true)
    }

    fn read(&self) -> Result<(Records, usize), StoreError> {
        let reader = BufReader::new(File::open(&self.path).map_err(|e| self.io(e))?);
        let mut records = Records::new();
        let mut lines = 0;
        for (index, text) in reader.lines().enumerate() {
            let text = text.map_err(|e| self.io(e))?;
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            lines += 1;
            let invalid = |reason: String| StoreError::Invalid {
                path: self.path.clone(),
                line: index + 1,
                reason,
            };
            let line: Line = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
            match self.record_of(line).map_err(invalid)? {
                (id, Some(record)) => records.insert(id, Arc::new(record)),
                (id, None) => records.remove(&id),
            };
        }
        Ok((records, lines))
    }

    fn record_of(&self, line: Line) -> Result<(String, Option<CredentialRecord>), String> {
        record_of(line, self.max_id_length)
    }
}

/// The record a line stands for (`None`: a tombstone), checked.
fn record_of(
    line: Line,
    max_id_length: usize,
) -> Result<(String, Option<CredentialRecord>), String> {
    crate::handshake::check_charge_point_id(&line.id, max_id_length)
        .map_err(|e| format!("id {:?}: {e}", line.id))?;
    if line.deleted {
        return Ok((line.id, None));
    }
    let profile = line
        .profile
        .ok_or("no `profile`")
        .and_then(|p| SecurityProfile::try_from(p).map_err(|_| "`profile` must be 0, 1, 2 or 3"))?;
    let hash = |phc: Option<String>, field: &str| {
        phc.map(|phc| PasswordHashString::parse(&phc).map_err(|e| format!("`{field}`: {e}")))
            .transpose()
    };
    let password = hash(line.password_hash, "password_hash")?;
    let previous = hash(line.previous_password_hash, "previous_password_hash")?;
    let previous_password = match (previous, line.previous_valid_until) {
        (Some(hash), Some(until)) => Some((hash, until)),
        (None, None) => None,
        _ => {
            return Err("`previous_password_hash` and `previous_valid_until` come together".into())
        }
    };
    let record = CredentialRecord {
        id: line.id,
        profile,
        password,
        previous_password,
    };
    record.check()?;
    Ok((record.id.clone(), Some(record)))
}

impl FileRecords {
    fn line_of(id: &str, record: Option<&CredentialRecord>) -> Line {
        match record {
            Some(record) => Line {
                id: id.to_owned(),
                profile: Some(record.profile as u8),
                password_hash: record.password.as_ref().map(|h| h.as_str().to_owned()),
                previous_password_hash: record
                    .previous_password
                    .as_ref()
                    .map(|(h, _)| h.as_str().to_owned()),
                previous_valid_until: record.previous_password.as_ref().map(|(_, until)| *until),
                deleted: false,
            },
            None => Line {
                id: id.to_owned(),
                profile: None,
                password_hash: None,
                previous_password_hash: None,
                previous_valid_until: None,
                deleted: true,
            },
        }
    }

    /// Applies `change` to the record of `id`: appended to the file and flushed, then
    /// visible to [`CredentialStore::get`]. Blocking I/O.
    fn update_blocking(&self, id: &str, change: ChangeFn) -> Result<bool, StoreError> {
        let mut file = self.file.lock();
        // Someone else's edit is read first, so that this change applies to it rather
        // than overwriting it.
        self.reload_locked(&mut file)?;
        let current = self.records.read().get(id).cloned();
        let record = match change(current.as_deref()) {
            Change::Keep => return Ok(false),
            Change::Set(record) => {
                record.check().map_err(|reason| StoreError::Invalid {
                    path: self.path.clone(),
                    line: file.lines + 1,
                    reason,
                })?;
                Some(record)
            }
            Change::Remove if current.is_none() => return Ok(false),
            Change::Remove => None,
        };
        let live = self.records.read().len() + usize::from(record.is_some())
            - usize::from(current.is_some());
        // Compaction (rare) writes the whole new set; the common append writes one line,
        // and the records are then changed in place, without copying the others.
        if file.lines + 1 > 2 * live + 64 {
            let mut records = self.records.read().clone();
            Self::apply(&mut records, id, &record);
            self.compact(&records)?;
            file.lines = records.len();
        } else {
            self.append(&Self::line_of(id, record.as_ref()))?;
            file.lines += 1;
        }
        let metadata = fs::metadata(&self.path).map_err(|e| self.io(e))?;
        file.version = Some(FileVersion::of(&metadata));
        Self::apply(&mut self.records.write(), id, &record);
        Ok(true)
    }

    fn apply(records: &mut Records, id: &str, record: &Option<CredentialRecord>) {
        match record {
            Some(record) => records.insert(id.to_owned(), Arc::new(record.clone())),
            None => records.remove(id),
        };
    }

    fn append(&self, line: &Line) -> Result<(), StoreError> {
        let mut text = serde_json::to_string(line).map_err(|e| self.io(io::Error::other(e)))?;
        text.push('\n');
        let mut file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        file.write_all(text.as_bytes()).map_err(|e| self.io(e))?;
        file.sync_data().map_err(|e| self.io(e))
    }

    /// Rewrites the file with one line per record: written beside it, flushed, then
    /// renamed over it, so that a crash leaves either the old file or the new one.
    fn compact(&self, records: &Records) -> Result<(), StoreError> {
        let mut ids: Vec<&String> = records.keys().collect();
        ids.sort();
        let mut text = String::new();
        for id in ids {
            let line = Self::line_of(id, Some(&records[id]));
            text.push_str(&serde_json::to_string(&line).map_err(|e| self.io(io::Error::other(e)))?);
            text.push('\n');
        }
        let temporary = self.path.with_extension("compacting");
        let mut file = File::create(&temporary).map_err(|e| self.io(e))?;
        file.write_all(text.as_bytes()).map_err(|e| self.io(e))?;
        file.sync_all().map_err(|e| self.io(e))?;
        fs::rename(&temporary, &self.path).map_err(|e| self.io(e))?;
        if let Some(directory) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(directory)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    fn io(&self, source: io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl CredentialStore for FileStore {
    fn get(&self, id: &str) -> Option<Arc<CredentialRecord>> {
        self.0.records.read().get(id).cloned()
    }

    fn update(&self, id: String, change: ChangeFn) -> BoxFuture<'_, Result<bool, StoreError>> {
        let store = self.0.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.update_blocking(&id, change))
                .await
                .unwrap_or_else(|e| Err(store_panicked(e)))
        })
    }

    fn len(&self) -> usize {
        self.0.records.read().len()
    }
}

fn store_panicked(e: tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        path: PathBuf::new(),
        source: io::Error::other(e.to_string()),
    }
}

impl CredentialRecord {
    /// Checks the record is usable: profiles 1 and 2 need a password.
    pub fn check(&self) -> Result<(), String> {
        if self.profile.uses_password() && self.password.is_none() {
            return Err(format!(
                "profile {} needs a `password_hash`",
                self.profile as u8
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$7QbeNsfSJVnmkJnpjSrB2S6gPaEjS26mVIQ7e54BKaU";

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn record(id: &str, profile: SecurityProfile) -> CredentialRecord {
        CredentialRecord {
            id: id.into(),
            profile,
            password: profile
                .uses_password()
                .then(|| PasswordHashString::parse(HASH).unwrap()),
            previous_password: None,
        }
    }

    #[test]
    fn later_lines_replace_earlier_ones_and_tombstones_delete() {
        let text = format!(
            "# provisioning run 1\n\
             {{\"id\":\"CP-1\",\"profile\":1,\"password_hash\":\"{HASH}\"}}\n\
             {{\"id\":\"CP-2\",\"profile\":0}}\n\
             \n\
             {{\"id\":\"CP-1\",\"profile\":0}}\n\
             {{\"id\":\"CP-2\",\"deleted\":true}}\n"
        );
        let file = file(&text);
        let store = FileStore::open(file.path(), 48).unwrap();
        assert_eq!(
            store.get("CP-1").unwrap().profile,
            SecurityProfile::Unsecured
        );
        assert!(store.get("CP-2").is_none());
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn an_invalid_line_names_the_file_line_and_reason() {
        for (text, expected) in [
            (
                "{\"id\":\"CP-1\",\"profile\":1}\n",
                "profile 1 needs a `password_hash`",
            ),
            ("{\"id\":\"CP-1\",\"profile\":4}\n", "must be 0, 1, 2 or 3"),
            (
                "{\"id\":\"CP-1\",\"profile\":0,\"pasword_hash\":\"x\"}\n",
                "unknown field",
            ),
            ("{\"id\":\"CP 1\",\"profile\":0}\n", "not allowed"),
            (
                "{\"id\":\"CP-1\",\"profile\":1,\"password_hash\":\"hunter2\"}\n",
                "PHC",
            ),
            ("\n\nnot json\n", ":3: "),
        ] {
            let file = file(text);
            let error = FileStore::open(file.path(), 48).err().unwrap().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(
                error.contains(&file.path().display().to_string()),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn changes_are_appended_and_survive_a_reopen() {
        let file = file("");
        let store = FileStore::open(file.path(), 48).unwrap();
        let set = |r: CredentialRecord| -> ChangeFn { Box::new(move |_| Change::Set(r)) };
        assert!(store
            .update(
                "CP-1".into(),
                set(record("CP-1", SecurityProfile::BasicAuth))
            )
            .await
            .unwrap());
        store
            .update(
                "CP-2".into(),
                set(record("CP-2", SecurityProfile::Unsecured)),
            )
            .await
            .unwrap();
        assert!(store
            .update("CP-2".into(), Box::new(|_| Change::Remove))
            .await
            .unwrap());
        assert!(!store
            .update("CP-9".into(), Box::new(|_| Change::Remove))
            .await
            .unwrap());
        assert_eq!(fs::read_to_string(file.path()).unwrap().lines().count(), 3);
        // Nobody else changed the file: nothing to read again.
        assert!(!store.reload().unwrap());

        let reopened = FileStore::open(file.path(), 48).unwrap();
        assert_eq!(
            *reopened.get("CP-1").unwrap(),
            record("CP-1", SecurityProfile::BasicAuth)
        );
        assert!(reopened.get("CP-2").is_none());
    }

    #[tokio::test]
    async fn a_record_that_breaks_the_rules_is_refused_and_nothing_is_written() {
        let file = file("");
        let store = FileStore::open(file.path(), 48).unwrap();
        let mut bad = record("CP-1", SecurityProfile::BasicAuth);
        bad.password = None;
        let error = store
            .update("CP-1".into(), Box::new(move |_| Change::Set(bad)))
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("needs a `password_hash`"),
            "{error}"
        );
        assert_eq!(fs::read_to_string(file.path()).unwrap(), "");
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn superseded_lines_are_compacted_away() {
        let file = file("");
        let store = FileStore::open(file.path(), 48).unwrap();
        for i in 0..200 {
            let profile = if i % 2 == 0 {
                SecurityProfile::Unsecured
            } else {
                SecurityProfile::BasicAuth
            };
            let r = record("CP-1", profile);
            store
                .update("CP-1".into(), Box::new(move |_| Change::Set(r)))
                .await
                .unwrap();
        }
        let lines = fs::read_to_string(file.path()).unwrap().lines().count();
        assert!(lines <= 66, "{lines} lines for one record");
        let reopened = FileStore::open(file.path(), 48).unwrap();
        assert_eq!(
            reopened.get("CP-1").unwrap().profile,
            SecurityProfile::BasicAuth
        );
    }

    #[test]
    fn an_edit_by_someone_else_is_read_and_a_broken_one_keeps_the_records() {
        let file = file("{\"id\":\"CP-1\",\"profile\":0}\n");
        let store = FileStore::open(file.path(), 48).unwrap();
        fs::write(
            file.path(),
            "{\"id\":\"CP-2\",\"profile\":0}\n{\"id\":\"CP-3\",\"profile\":0}\n",
        )
        .unwrap();
        assert!(store.reload().unwrap());
        assert!(store.get("CP-1").is_none());
        assert_eq!(store.len(), 2);
        fs::write(file.path(), "{\"id\":\"CP-2\",\"profile\":0}\n{broken\n").unwrap();
        assert!(store.reload().is_err());
        assert_eq!(
            store.len(),
            2,
            "an invalid file leaves the records as they were"
        );
    }
}
