//! Keyed state of one partition, owned by the runtime and checkpointed by it.
//!
//! A [`State`] is what a [`crate::StatefulProcessor`] reads and changes for the partition of
//! the input it is handling: a map from a string key (a vehicle id, a delivery id) to a value
//! of the processor's type. Every key changed since the last checkpoint is *dirty*; at the
//! next commit the runtime writes each dirty key once (its current value, or a tombstone if
//! it was removed) to the changelog topic, so a checkpoint costs the keys that changed, not
//! the whole state. Restoring replays the (compacted) changelog partition.
//!
//! Changelog records: key = input topic, `0x00`, state key (one changelog partition per input
//! partition number serves every input topic); value = the JSON of the value, or none (a
//! tombstone) for a removed key.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The keyed state of one input partition (see the module docs).
#[derive(Debug, Clone)]
pub struct State<V> {
    entries: HashMap<String, V>,
    dirty: HashSet<String>,
}

impl<V> Default for State<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            dirty: HashSet::new(),
        }
    }
}

impl<V> State<V> {
    /// Empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key)
    }

    /// The value of `key`, to change (marks it dirty).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let v = self.entries.get_mut(key)?;
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_owned());
        }
        Some(v)
    }

    /// The value of `key`, created with `make` if absent (marks it dirty).
    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_owned());
        }
        if !self.entries.contains_key(key) {
            self.entries.insert(key.to_owned(), make());
        }
        self.entries
            .get_mut(key)
            .expect("present: inserted just above")
    }

    /// Sets `key` to `value` (marks it dirty).
    pub fn insert(&mut self, key: &str, value: V) -> Option<V> {
        self.dirty.insert(key.to_owned());
        self.entries.insert(key.to_owned(), value)
    }

    /// Removes `key` (its tombstone goes to the changelog).
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let old = self.entries.remove(key);
        if old.is_some() {
            self.dirty.insert(key.to_owned());
        }
        old
    }

    /// Keeps the entries for which `keep` is true; the others are removed (tombstoned).
    /// `keep` may change a value: every value it is called with is marked dirty only if it
    /// returns `true` *and* reports a change through the `&mut bool` it is given.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut V, &mut bool) -> bool) {
        let dirty = &mut self.dirty;
        self.entries.retain(|k, v| {
            let mut changed = false;
            let kept = keep(k, v, &mut changed);
            if !kept || changed {
                dirty.insert(k.clone());
            }
            kept
        });
    }

    /// Every entry (read only).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of keys changed since the last checkpoint.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }
}

/// Why a changelog record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    /// The key has no `0x00` separator between topic and state key, or is not UTF-8.
    #[error("changelog key is not <topic> NUL <utf-8 key>")]
    Key,
    /// The value is not the JSON of the state type.
    #[error("changelog value does not decode: {0}")]
    Value(#[from] serde_json::Error),
    /// A value could not be encoded.
    #[error("state value does not encode: {0}")]
    Encode(String),
}

/// One changelog record: key and value (`None`: a tombstone).
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// The changelog key of `key` in the state of `topic`'s partition.
pub fn changelog_key(topic: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 1 + key.len());
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The changelog key of a partition's checkpoint record: its value is the input offset the
/// state covers (decimal), written with every commit, so a restore knows it has read the
/// state of the committed offset (and not stopped short of a transaction whose markers are
/// still being written). `0xFF` is never UTF-8, so no state key collides with it.
pub fn checkpoint_key(topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 2);
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(&[0, 0xFF]);
    k
}

/// What a changelog record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangelogKey<'a> {
    /// One key of the state of `topic`'s partition.
    Entry {
        /// Input topic.
        topic: &'a str,
        /// State key.
        key: &'a str,
    },
    /// The checkpoint record of `topic`'s partition.
    Checkpoint {
        /// Input topic.
        topic: &'a str,
    },
}

/// Reads a changelog key (see [`changelog_key`], [`checkpoint_key`]).
pub fn parse_changelog_key(k: &[u8]) -> Result<ChangelogKey<'_>, ChangelogError> {
    let at = k.iter().position(|b| *b == 0).ok_or(ChangelogError::Key)?;
    let topic = std::str::from_utf8(&k[..at]).map_err(|_| ChangelogError::Key)?;
    let rest = &k[at + 1..];
    if rest == [0xFF] {
        return Ok(ChangelogKey::Checkpoint { topic });
    }
    let key = std::str::from_utf8(rest).map_err(|_| ChangelogError::Key)?;
    Ok(ChangelogKey::Entry { topic, key })
}

/// The offset a checkpoint record's value carries.
pub fn parse_checkpoint(value: Option<&[u8]>) -> Option<i64> {
    std::str::from_utf8(value?).ok()?.parse().ok()
}

impl<V: Serialize + DeserializeOwned> State<V> {
    /// Takes the dirty keys as changelog (key, value) pairs, `None` for a tombstone, and marks
    /// the state clean. The caller writes them; if the checkpoint fails, the runtime drops the
    /// state and restores it from the changelog.
    pub fn take_changes(&mut self, topic: &str) -> Result<Vec<Change>, ChangelogError> {
        let mut out = Vec::with_capacity(self.dirty.len());
        for k in &self.dirty {
            let value = match self.entries.get(k) {
                Some(v) => {
                    Some(serde_json::to_vec(v).map_err(|e| ChangelogError::Encode(e.to_string()))?)
                }
                None => None,
            };
            out.push((changelog_key(topic, k), value));
        }
        self.dirty.clear();
        Ok(out)
    }

    /// Applies one changelog record of this state (restore): a value sets the key, a
    /// tombstone removes it. The key is not marked dirty.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), ChangelogError> {
        match value {
            Some(bytes) => {
                let v: V = serde_json::from_slice(bytes)?;
                self.entries.insert(key.to_owned(), v);
            }
            None => {
                self.entries.remove(key);
            }
        }
        Ok(())
    }

    /// What a restore from this state's changelog gives: every value through its JSON
    /// encoding, nothing dirty (a processor's restart test starts its second life with it).
    pub fn reloaded(&self) -> Result<Self, ChangelogError> {
        let mut out = Self::new();
        for (k, v) in &self.entries {
            let bytes = serde_json::to_vec(v).map_err(|e| ChangelogError::Encode(e.to_string()))?;
            out.apply(k, Some(&bytes))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_changed_keys_are_checkpointed_once_each() {
        let mut s = State::<u32>::new();
        *s.get_or_insert_with("a", || 0) += 1;
        *s.get_or_insert_with("a", || 0) += 1;
        s.insert("b", 7);
        let mut changes = s.take_changes("t").unwrap();
        changes.sort();
        assert_eq!(
            changes,
            vec![
                (b"t\0a".to_vec(), Some(b"2".to_vec())),
                (b"t\0b".to_vec(), Some(b"7".to_vec()))
            ]
        );
        assert_eq!(s.dirty_len(), 0);
        assert!(s.get("a").is_some() && s.get_mut("zz").is_none());
        assert_eq!(s.dirty_len(), 0, "reading or missing keys dirties nothing");
        s.remove("b");
        s.remove("never");
        assert_eq!(
            s.take_changes("t").unwrap(),
            vec![(b"t\0b".to_vec(), None)],
            "a removal is a tombstone; removing a missing key writes nothing"
        );
    }

    #[test]
    fn retain_tombstones_what_it_drops_and_checkpoints_what_it_changes() {
        let mut s = State::<u32>::new();
        for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
            s.insert(k, v);
        }
        s.take_changes("t").unwrap();
        s.retain(|k, v, changed| {
            if k == "b" {
                *v += 10;
                *changed = true;
            }
            k != "c"
        });
        let mut changes = s.take_changes("t").unwrap();
        changes.sort();
        assert_eq!(
            changes,
            vec![
                (b"t\0b".to_vec(), Some(b"12".to_vec())),
                (b"t\0c".to_vec(), None)
            ]
        );
    }

    #[test]
    fn keys_split_at_the_first_nul_and_bad_keys_are_refused() {
        let entry = |topic, key| ChangelogKey::Entry { topic, key };
        assert_eq!(
            parse_changelog_key(b"fleet.t\0VEH-1").unwrap(),
            entry("fleet.t", "VEH-1")
        );
        assert_eq!(parse_changelog_key(b"t\0a\0b").unwrap(), entry("t", "a\0b"));
        assert_eq!(parse_changelog_key(b"t\0").unwrap(), entry("t", ""));
        assert_eq!(
            parse_changelog_key(&checkpoint_key("t")).unwrap(),
            ChangelogKey::Checkpoint { topic: "t" },
            "no state key can look like a checkpoint"
        );
        assert!(parse_changelog_key(b"no-separator").is_err());
        assert!(parse_changelog_key(b"t\0\xfe").is_err());
        assert_eq!(parse_checkpoint(Some(b"1234")), Some(1234));
        assert_eq!(parse_checkpoint(Some(b"x")), None);
        assert_eq!(parse_checkpoint(None), None);
        let mut s = State::<u32>::new();
        assert!(s.apply("k", Some(b"not json")).is_err());
    }

    proptest! {
        /// Replaying every checkpoint's changes in order rebuilds exactly the live state,
        /// whatever the sequence of inserts, updates and removals.
        #[test]
        fn replaying_the_changelog_rebuilds_the_state(
            ops in proptest::collection::vec((0u8..3, 0u8..12, any::<u16>(), any::<bool>()), 0..200)
        ) {
            let mut live = State::<u16>::new();
            let mut log: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
            for (op, key, value, checkpoint) in ops {
                let key = format!("k{key}");
                match op {
                    0 => { live.insert(&key, value); }
                    1 => { live.remove(&key); }
                    _ => { *live.get_or_insert_with(&key, || 0) ^= value; }
                }
                if checkpoint {
                    log.extend(live.take_changes("t").unwrap());
                }
            }
            log.extend(live.take_changes("t").unwrap());
            let mut restored = State::<u16>::new();
            for (k, v) in &log {
                let ChangelogKey::Entry { topic, key } = parse_changelog_key(k).unwrap() else {
                    panic!("only entries were written");
                };
                prop_assert_eq!(topic, "t");
                restored.apply(key, v.as_deref()).unwrap();
            }
            let mut a: Vec<_> = live.iter().map(|(k, v)| (k.to_owned(), *v)).collect();
            let mut b: Vec<_> = restored.iter().map(|(k, v)| (k.to_owned(), *v)).collect();
            a.sort();
            b.sort();
            prop_assert_eq!(a, b);
        }
    }
}
