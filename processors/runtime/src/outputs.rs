//! Records a processor emits for one input, staged in one reusable buffer.

use std::ops::Range;
use std::sync::Arc;

use fleet_schemas::{Encoder, Record};

use crate::ProcessError;

/// One staged output: topic, key and payload as ranges of the shared arena.
#[derive(Debug, Clone)]
pub(crate) struct Staged {
    pub(crate) topic: Arc<str>,
    pub(crate) key: Range<usize>,
    pub(crate) payload: Range<usize>,
}

/// The outputs of one input record (or one timer tick).
///
/// Outputs are encoded into a single arena that is cleared, not freed, between records, so a
/// warm loop does not allocate for them. The runtime produces them after the processor returns
/// and stores the input's offset only once the broker acknowledged every one of them.
#[derive(Debug, Default)]
pub struct Outputs {
    pub(crate) staged: Vec<Staged>,
    pub(crate) arena: Vec<u8>,
    scratch: Vec<u8>,
}

impl Outputs {
    /// Empty outputs.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn clear(&mut self) {
        self.staged.clear();
        self.arena.clear();
    }

    /// Number of staged records.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Stages `record` for `topic`, keyed by [`Record::key`], encoded with `encoder`.
    pub fn push<T: Record>(
        &mut self,
        topic: &Arc<str>,
        encoder: &Encoder<T>,
        record: &T,
    ) -> Result<(), ProcessError> {
        self.push_keyed(topic, record.key().as_bytes(), encoder, record)
    }

    /// Stages `record` for `topic` with an explicit key.
    pub fn push_keyed<T: Record>(
        &mut self,
        topic: &Arc<str>,
        key: &[u8],
        encoder: &Encoder<T>,
        record: &T,
    ) -> Result<(), ProcessError> {
        encoder
            .encode_into(record, &mut self.scratch)
            .map_err(|e| ProcessError::Fatal(format!("encoding {}: {e}", T::FULL_NAME)))?;
        let k0 = self.arena.len();
        self.arena.extend_from_slice(key);
        let p0 = self.arena.len();
        self.arena.extend_from_slice(&self.scratch);
        self.staged.push(Staged {
            topic: Arc::clone(topic),
            key: k0..p0,
            payload: p0..self.arena.len(),
        });
        Ok(())
    }

    /// Stages raw bytes (already framed) for `topic`.
    pub fn push_raw(&mut self, topic: &Arc<str>, key: &[u8], payload: &[u8]) {
        let k0 = self.arena.len();
        self.arena.extend_from_slice(key);
        let p0 = self.arena.len();
        self.arena.extend_from_slice(payload);
        self.staged.push(Staged {
            topic: Arc::clone(topic),
            key: k0..p0,
            payload: p0..self.arena.len(),
        });
    }

    /// Iterates over (topic, key, payload).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8], &[u8])> {
        self.staged.iter().map(|s| {
            (
                &*s.topic,
                &self.arena[s.key.clone()],
                &self.arena[s.payload.clone()],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::{Decoder, EmergencyEvent, EmergencyKind, Severity};

    fn ev(id: &str) -> EmergencyEvent {
        EmergencyEvent {
            event_id: id.into(),
            vehicle_id: format!("VEH-{id}"),
            event_time: 1,
            ingest_time: 2,
            sent_time: None,
            kind: EmergencyKind::Crash,
            severity: Severity::High,
            position: None,
            description: None,
            source_anomaly_id: None,
            source: "test".into(),
        }
    }

    #[tokio::test]
    async fn staged_records_decode_and_the_arena_is_reused() {
        let topic: Arc<str> = Arc::from("fleet.emergencies");
        let enc = Encoder::<EmergencyEvent>::with_schema_id(3);
        let dec = Decoder::<EmergencyEvent>::offline(&[3]);
        let mut out = Outputs::new();
        out.push(&topic, &enc, &ev("a")).expect("push");
        out.push_raw(&topic, b"k", b"raw");
        out.push(&topic, &enc, &ev("b")).expect("push");
        let items: Vec<_> = out.iter().collect();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].1, b"VEH-a");
        assert_eq!(dec.decode(items[0].2).await.expect("decode"), ev("a"));
        assert_eq!(items[1], ("fleet.emergencies", &b"k"[..], &b"raw"[..]));
        assert_eq!(dec.decode(items[2].2).await.expect("decode"), ev("b"));
        let cap = out.arena.capacity();
        out.clear();
        assert!(out.is_empty());
        out.push(&topic, &enc, &ev("c")).expect("push");
        assert_eq!(out.arena.capacity(), cap, "no reallocation when warm");
    }
}
