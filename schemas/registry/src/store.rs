//! The registry's data: schemas by global id, subjects with their versions, compatibility
//! levels. Pure logic plus an atomic JSON file for persistence.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compat::Level;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The schema text is not a valid Avro schema.
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// Only AVRO is supported.
    #[error("unsupported schema type {0}")]
    UnsupportedType(String),
    /// The schema breaks the subject's compatibility level.
    #[error("incompatible at level {level}: {details}")]
    Incompatible {
        /// Level in force.
        level: Level,
        /// Why.
        details: String,
    },
    /// No such subject (or all its versions are deleted).
    #[error("subject {0} not found")]
    SubjectNotFound(String),
    /// No such version.
    #[error("version {0} not found")]
    VersionNotFound(String),
    /// Not a compatibility level.
    #[error("invalid compatibility level {0}")]
    InvalidLevel(String),
    /// Reading or writing the data file failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The data file does not parse.
    #[error("corrupt data file: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VersionEntry {
    version: u32,
    id: u32,
    #[serde(default)]
    deleted: bool,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Persisted {
    /// Schema text by global id (compact JSON).
    schemas: BTreeMap<u32, String>,
    subjects: BTreeMap<String, Vec<VersionEntry>>,
    global_level: Option<Level>,
    #[serde(default)]
    subject_levels: BTreeMap<String, Level>,
}

/// One version of a subject, as answered to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionView {
    /// Version number within the subject, from 1.
    pub version: u32,
    /// Global schema id.
    pub id: u32,
    /// Schema text.
    pub schema: String,
}

/// The registry's state, persisted to `<dir>/registry.json` on every change.
#[derive(Debug)]
pub struct Store {
    path: Option<PathBuf>,
    data: Persisted,
    /// Normalised schema text -> id (derived from `data.schemas`).
    by_normalised: HashMap<String, u32>,
}

/// Key for "the same schema": the JSON with object keys sorted and whitespace removed.
fn normalise(schema_text: &str) -> Result<String, StoreError> {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&map[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let v: Value = serde_json::from_str(schema_text)
        .map_err(|e| StoreError::InvalidSchema(format!("not JSON: {e}")))?;
    let mut out = String::with_capacity(schema_text.len());
    write(&v, &mut out);
    Ok(out)
}

fn parse(schema_text: &str) -> Result<Schema, StoreError> {
    Schema::parse_str(schema_text).map_err(|e| StoreError::InvalidSchema(e.to_string()))
}

impl Store {
    /// An empty store that is not persisted (tests).
    pub fn in_memory() -> Self {
        Self {
            path: None,
            data: Persisted::default(),
            by_normalised: HashMap::new(),
        }
    }

    /// Opens the store in `dir`, creating the directory and an empty store if needed.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("registry.json");
        let data: Persisted = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(e.into()),
        };
        let mut by_normalised = HashMap::new();
        for (id, text) in &data.schemas {
            by_normalised.insert(normalise(text)?, *id);
        }
        Ok(Self {
            path: Some(path),
            data,
            by_normalised,
        })
    }

    /// Applies `f` and saves; if either fails, memory goes back to what it was, so that nothing
    /// (an id above all) exists in memory that is not on disk: a failed save can never lead to
    /// one id being handed out for two schemas across a restart.
    fn change<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let before = (self.data.clone(), self.by_normalised.clone());
        let result = f(self).and_then(|v| self.persist().map(|()| v));
        if result.is_err() {
            (self.data, self.by_normalised) = before;
        }
        result
    }

    fn persist(&self) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.data)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Live (not deleted) versions of `subject`, oldest first.
    fn live(&self, subject: &str) -> Vec<&VersionEntry> {
        self.data
            .subjects
            .get(subject)
            .map(|vs| vs.iter().filter(|v| !v.deleted).collect())
            .unwrap_or_default()
    }

    /// Subjects with at least one live version, sorted.
    pub fn subjects(&self) -> Vec<String> {
        self.data
            .subjects
            .keys()
            .filter(|s| !self.live(s).is_empty())
            .cloned()
            .collect()
    }

    /// Live version numbers of `subject`.
    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, StoreError> {
        let live = self.live(subject);
        if live.is_empty() {
            return Err(StoreError::SubjectNotFound(subject.to_owned()));
        }
        Ok(live.iter().map(|v| v.version).collect())
    }

    fn view(&self, e: &VersionEntry) -> VersionView {
        VersionView {
            version: e.version,
            id: e.id,
            schema: self.data.schemas.get(&e.id).cloned().unwrap_or_default(),
        }
    }

    fn find_version(&self, subject: &str, version: &str) -> Result<&VersionEntry, StoreError> {
        let live = self.live(subject);
        if live.is_empty() {
            return Err(StoreError::SubjectNotFound(subject.to_owned()));
        }
        let entry = if version == "latest" || version == "-1" {
            live.last().copied()
        } else {
            let n: u32 = version
                .parse()
                .map_err(|_| StoreError::VersionNotFound(version.to_owned()))?;
            live.iter().find(|v| v.version == n).copied()
        };
        entry.ok_or_else(|| StoreError::VersionNotFound(version.to_owned()))
    }

    /// One version (`latest`, `-1` or a number) of `subject`.
    pub fn version(&self, subject: &str, version: &str) -> Result<VersionView, StoreError> {
        self.find_version(subject, version).map(|e| self.view(e))
    }

    /// Schema text by global id.
    pub fn schema_by_id(&self, id: u32) -> Option<String> {
        self.data.schemas.get(&id).cloned()
    }

    /// (subject, version) pairs that use `id`.
    pub fn id_versions(&self, id: u32) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for (subject, versions) in &self.data.subjects {
            for v in versions.iter().filter(|v| v.id == id && !v.deleted) {
                out.push((subject.clone(), v.version));
            }
        }
        out
    }

    /// Level in force for `subject`.
    pub fn effective_level(&self, subject: &str) -> Level {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    /// The global level (BACKWARD unless set).
    pub fn global_level(&self) -> Level {
        self.data.global_level.unwrap_or(Level::Backward)
    }

    /// The subject's own level, if set.
    pub fn subject_level(&self, subject: &str) -> Option<Level> {
        self.data.subject_levels.get(subject).copied()
    }

    /// Sets the global level.
    pub fn set_global_level(&mut self, level: Level) -> Result<(), StoreError> {
        self.change(|s| {
            s.data.global_level = Some(level);
            Ok(())
        })
    }

    /// Sets a subject's level.
    pub fn set_subject_level(&mut self, subject: &str, level: Level) -> Result<(), StoreError> {
        self.change(|s| {
            s.data.subject_levels.insert(subject.to_owned(), level);
            Ok(())
        })
    }

    /// Finds `schema_text` among the live versions of `subject`.
    pub fn lookup(
        &self,
        subject: &str,
        schema_text: &str,
    ) -> Result<Option<VersionView>, StoreError> {
        let live = self.live(subject);
        if live.is_empty() {
            return Err(StoreError::SubjectNotFound(subject.to_owned()));
        }
        let key = normalise(schema_text)?;
        let Some(id) = self.by_normalised.get(&key) else {
            return Ok(None);
        };
        Ok(live.iter().find(|v| v.id == *id).map(|v| self.view(v)))
    }

    fn check_against(
        &self,
        subject: &str,
        level: Level,
        new: &Schema,
        earlier: &[&VersionEntry],
    ) -> Result<(), StoreError> {
        if level == Level::None {
            return Ok(());
        }
        let to_check: Vec<&VersionEntry> = if level.transitive() {
            earlier.to_vec()
        } else {
            earlier.last().copied().into_iter().collect()
        };
        for e in to_check {
            let text = self.data.schemas.get(&e.id).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "{subject} v{} points to missing id {}",
                    e.version, e.id
                ))
            })?;
            let old = parse(text)?;
            level
                .check(new, &old)
                .map_err(|details| StoreError::Incompatible {
                    level,
                    details: format!("against version {}: {details}", e.version),
                })?;
        }
        Ok(())
    }

    /// Registers `schema_text` under `subject`; returns its global id.
    pub fn register(
        &mut self,
        subject: &str,
        schema_text: &str,
        schema_type: Option<&str>,
    ) -> Result<u32, StoreError> {
        if let Some(t) = schema_type
            && !t.eq_ignore_ascii_case("AVRO")
        {
            return Err(StoreError::UnsupportedType(t.to_owned()));
        }
        let new = parse(schema_text)?;
        let key = normalise(schema_text)?;
        let existing_id = self.by_normalised.get(&key).copied();
        let live: Vec<VersionEntry> = self.live(subject).into_iter().cloned().collect();
        if let Some(id) = existing_id
            && live.iter().any(|v| v.id == id)
        {
            return Ok(id); // idempotent
        }
        let live_refs: Vec<&VersionEntry> = live.iter().collect();
        self.check_against(subject, self.effective_level(subject), &new, &live_refs)?;
        self.change(|s| s.add_version(subject, schema_text, key, existing_id))
    }

    /// Adds a checked schema as the next version of `subject` (a new id unless `existing_id`).
    fn add_version(
        &mut self,
        subject: &str,
        schema_text: &str,
        key: String,
        existing_id: Option<u32>,
    ) -> Result<u32, StoreError> {
        let id = match existing_id {
            Some(id) => id,
            None => {
                let id = self.data.schemas.keys().next_back().copied().unwrap_or(0) + 1;
                let compact = serde_json::to_string(
                    &serde_json::from_str::<Value>(schema_text)
                        .map_err(|e| StoreError::InvalidSchema(e.to_string()))?,
                )
                .map_err(|e| StoreError::InvalidSchema(e.to_string()))?;
                self.data.schemas.insert(id, compact);
                self.by_normalised.insert(key, id);
                id
            }
        };
        let versions = self.data.subjects.entry(subject.to_owned()).or_default();
        let version = versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        versions.push(VersionEntry {
            version,
            id,
            deleted: false,
        });
        Ok(id)
    }

    /// Whether `schema_text` is compatible with `version` of `subject` (or all, for transitive
    /// levels and `latest`).
    pub fn is_compatible(
        &self,
        subject: &str,
        version: &str,
        schema_text: &str,
    ) -> Result<bool, StoreError> {
        let new = parse(schema_text)?;
        let level = self.effective_level(subject);
        let live = self.live(subject);
        let against: Vec<&VersionEntry> = if version == "latest" || version == "-1" {
            live
        } else {
            vec![self.find_version(subject, version)?]
        };
        match self.check_against(subject, level, &new, &against) {
            Ok(()) => Ok(true),
            Err(StoreError::Incompatible { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Soft-deletes every version of `subject`; returns the deleted version numbers.
    pub fn delete_subject(&mut self, subject: &str) -> Result<Vec<u32>, StoreError> {
        let deleted = self.versions(subject)?;
        self.change(|s| {
            if let Some(vs) = s.data.subjects.get_mut(subject) {
                vs.iter_mut().for_each(|v| v.deleted = true);
            }
            Ok(deleted)
        })
    }

    /// Soft-deletes one version; returns its number.
    pub fn delete_version(&mut self, subject: &str, version: &str) -> Result<u32, StoreError> {
        let n = self.find_version(subject, version)?.version;
        self.change(|s| {
            if let Some(v) = s
                .data
                .subjects
                .get_mut(subject)
                .and_then(|vs| vs.iter_mut().find(|v| v.version == n))
            {
                v.deleted = true;
            }
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
    const V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}]}"#;
    const BAD: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"c","type":"string"}]}"#;

    #[test]
    fn register_is_idempotent_and_ids_are_global() {
        let mut s = Store::in_memory();
        let id = s.register("t-value", V1, None).expect("register");
        assert_eq!(id, 1);
        // Same schema, different whitespace and key order: same id, no new version.
        let reordered = r#"{ "name":"R", "type":"record", "fields":[{"type":"long","name":"a"}] }"#;
        assert_eq!(
            s.register("t-value", reordered, Some("AVRO"))
                .expect("again"),
            1
        );
        assert_eq!(s.versions("t-value").expect("versions"), vec![1]);
        // Same schema under another subject: same global id, version 1 there.
        assert_eq!(s.register("u-value", V1, None).expect("other subject"), 1);
        assert_eq!(s.version("u-value", "latest").expect("latest").version, 1);
        let id2 = s.register("t-value", V2, None).expect("v2");
        assert_eq!(id2, 2);
        assert_eq!(s.versions("t-value").expect("versions"), vec![1, 2]);
        assert_eq!(s.id_versions(1).len(), 2);
    }

    #[test]
    fn backward_incompatible_schema_is_rejected_unless_level_none() {
        let mut s = Store::in_memory();
        s.register("t-value", V1, None).expect("v1");
        let err = s.register("t-value", BAD, None).expect_err("incompatible");
        assert!(matches!(
            err,
            StoreError::Incompatible {
                level: Level::Backward,
                ..
            }
        ));
        assert!(!s.is_compatible("t-value", "latest", BAD).expect("check"));
        assert!(s.is_compatible("t-value", "latest", V2).expect("check"));
        s.set_subject_level("t-value", Level::None).expect("level");
        assert_eq!(s.register("t-value", BAD, None).expect("now allowed"), 2);
        // The global level is untouched.
        assert_eq!(s.global_level(), Level::Backward);
    }

    #[test]
    fn transitive_checks_every_version() {
        let mut s = Store::in_memory();
        s.set_global_level(Level::None).expect("none");
        let a = r#"{"type":"record","name":"R","fields":[{"name":"x","type":"string"}]}"#;
        let b = r#"{"type":"record","name":"R","fields":[{"name":"x","type":"long"}]}"#;
        let c = r#"{"type":"record","name":"R","fields":[{"name":"x","type":"double"}]}"#;
        s.register("s", a, None).expect("a");
        s.register("s", b, None).expect("b");
        s.set_subject_level("s", Level::Backward).expect("backward");
        // long -> double is a legal promotion, so c can read b (latest)...
        assert!(s.is_compatible("s", "latest", c).expect("check"));
        // ...but not a (string), which a transitive level also checks.
        s.set_subject_level("s", Level::BackwardTransitive)
            .expect("transitive");
        assert!(s.register("s", c, None).is_err());
    }

    #[test]
    fn invalid_schema_and_unknown_things_are_errors() {
        let mut s = Store::in_memory();
        assert!(matches!(
            s.register("t", "{not json", None),
            Err(StoreError::InvalidSchema(_))
        ));
        assert!(matches!(
            s.register(
                "t",
                r#"{"type":"record","name":"R","fields":[{"name":"a","type":"nope"}]}"#,
                None
            ),
            Err(StoreError::InvalidSchema(_))
        ));
        assert!(matches!(
            s.register("t", V1, Some("PROTOBUF")),
            Err(StoreError::UnsupportedType(_))
        ));
        assert!(matches!(
            s.versions("missing"),
            Err(StoreError::SubjectNotFound(_))
        ));
        s.register("t", V1, None).expect("v1");
        assert!(matches!(
            s.version("t", "7"),
            Err(StoreError::VersionNotFound(_))
        ));
        assert!(matches!(
            s.version("t", "x"),
            Err(StoreError::VersionNotFound(_))
        ));
        assert_eq!(s.lookup("t", V2).expect("lookup"), None);
        assert_eq!(s.lookup("t", V1).expect("lookup").map(|v| v.id), Some(1));
    }

    #[test]
    fn soft_delete_hides_versions_but_keeps_ids() {
        let mut s = Store::in_memory();
        s.register("t", V1, None).expect("v1");
        s.register("t", V2, None).expect("v2");
        assert_eq!(s.delete_version("t", "2").expect("delete"), 2);
        assert_eq!(s.version("t", "latest").expect("latest").version, 1);
        assert_eq!(s.delete_subject("t").expect("delete all"), vec![1]);
        assert!(s.subjects().is_empty());
        assert!(
            s.schema_by_id(2).is_some(),
            "ids stay resolvable for old data"
        );
        // Re-registering after a delete creates a new version number, same id.
        assert_eq!(s.register("t", V1, None).expect("again"), 1);
        assert_eq!(s.versions("t").expect("versions"), vec![3]);
    }

    #[test]
    fn persists_and_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = Store::open(dir.path()).expect("open");
            s.register("t", V1, None).expect("v1");
            s.register("t", V2, None).expect("v2");
            s.set_subject_level("t", Level::Full).expect("level");
        }
        let mut s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.versions("t").expect("versions"), vec![1, 2]);
        assert_eq!(s.subject_level("t"), Some(Level::Full));
        assert_eq!(s.register("other", V2, None).expect("same id"), 2);
        assert_eq!(
            s.register("other", BAD, None).ok(),
            None,
            "BACKWARD vs V2 rejects BAD"
        );
        std::fs::write(dir.path().join("registry.json"), b"{garbage").expect("write");
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// A save that fails (disk full, permissions) leaves memory as it was: the id the failed
    /// registration would have taken is given to the next schema, in memory and on disk alike.
    #[test]
    fn a_failed_save_changes_nothing_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Store::open(dir.path()).expect("open");
        assert_eq!(s.register("a", V1, None).expect("v1"), 1);
        // The temporary file cannot be created: a directory is in its place.
        let blocker = dir.path().join("registry.json.tmp");
        std::fs::create_dir(&blocker).expect("blocker");
        assert!(s.register("b", V2, None).is_err(), "the save failed");
        assert_eq!(s.schema_by_id(2), None, "no id 2 in memory");
        assert!(s.versions("b").is_err(), "no subject b in memory");
        assert!(s.set_subject_level("a", Level::Full).is_err());
        assert_eq!(s.subject_level("a"), None);
        assert!(s.delete_subject("a").is_err());
        assert_eq!(s.versions("a").expect("a still live"), vec![1]);
        std::fs::remove_dir(&blocker).expect("unblock");
        // Another schema now takes id 2; after a restart id 2 is still that schema.
        assert_eq!(s.register("c", V2, None).expect("c"), 2);
        drop(s);
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.id_versions(2), vec![("c".to_owned(), 1)]);
        assert!(s.versions("b").is_err());
    }
}
