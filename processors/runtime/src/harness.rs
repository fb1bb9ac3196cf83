//! Drives a [`StatefulProcessor`] without Kafka, the way the state runtime does: one
//! [`State`] per input partition, commits that keep each partition's changed keys (its
//! "changelog"), and a restart that starts a new processor from the committed state only.
//! Processors' unit tests use it to check crash and restart behaviour in microseconds; the
//! runtime's own tests against the broker check that it keeps these promises.

use std::collections::{BTreeMap, HashMap};

use crate::state::{ChangelogKey, State, parse_changelog_key};
use crate::{Input, Outputs, ProcessError, StatefulProcessor};

/// A [`StatefulProcessor`] with in-memory partitions and checkpoints (see the module docs).
pub struct Harness<P: StatefulProcessor> {
    /// The processor (replaced by [`Harness::restart`]).
    pub processor: P,
    states: BTreeMap<(String, i32), State<P::State>>,
    /// Committed values per partition (what a restore would read).
    committed: BTreeMap<(String, i32), HashMap<String, Vec<u8>>>,
}

impl<P: StatefulProcessor> std::fmt::Debug for Harness<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("partitions", &self.states.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<P: StatefulProcessor> Harness<P> {
    /// A harness with no partition assigned yet.
    pub fn new(processor: P) -> Self {
        Self {
            processor,
            states: BTreeMap::new(),
            committed: BTreeMap::new(),
        }
    }

    /// Assigns `topic`/`partition` (restored from its committed state), as the runtime does
    /// when the group hands it over, whether or not an input follows.
    pub fn assign(&mut self, topic: &str, partition: i32) {
        let key = (topic.to_owned(), partition);
        if self.states.contains_key(&key) {
            return;
        }
        let mut state = State::new();
        for (k, v) in self.committed.get(&key).into_iter().flatten() {
            #[allow(clippy::expect_used)]
            state
                .apply(k, Some(v))
                .expect("a committed value decodes (it was encoded by the same type)");
        }
        self.states.insert(key, state);
    }

    /// Handles one input against its partition's state; returns the staged outputs.
    pub async fn process(&mut self, input: &Input<'_, P::Input>) -> Result<Outputs, ProcessError> {
        self.assign(input.topic, input.partition);
        let mut out = Outputs::new();
        #[allow(clippy::expect_used)]
        let state = self
            .states
            .get_mut(&(input.topic.to_owned(), input.partition))
            .expect("assigned above");
        self.processor.process(input, state, &mut out).await?;
        Ok(out)
    }

    /// One timer tick over every assigned partition, in partition order.
    pub async fn tick(&mut self, now_ms: i64) -> Result<Outputs, ProcessError> {
        let mut out = Outputs::new();
        for ((topic, partition), state) in &mut self.states {
            self.processor
                .on_tick(now_ms, topic, *partition, state, &mut out)
                .await?;
        }
        Ok(out)
    }

    /// A commit: the processor's flush, every changed key into the committed state, then
    /// the processor's `committed`.
    pub async fn commit(&mut self) -> Result<(), ProcessError> {
        self.processor.flush().await?;
        for ((topic, partition), state) in &mut self.states {
            let changes = state
                .take_changes(topic)
                .map_err(|e| ProcessError::Fatal(e.to_string()))?;
            let log = self
                .committed
                .entry((topic.clone(), *partition))
                .or_default();
            for (k, v) in changes {
                if let Ok(ChangelogKey::Entry { key, .. }) = parse_changelog_key(&k) {
                    match v {
                        Some(v) => log.insert(key.to_owned(), v),
                        None => log.remove(key),
                    };
                }
            }
        }
        self.processor.committed().await;
        Ok(())
    }

    /// A crash and restart: uncommitted state is lost, `processor` (the new life) starts
    /// with the committed state of every partition that was assigned.
    pub fn restart(&mut self, processor: P) {
        self.processor = processor;
        self.abort();
    }

    /// An aborted batch (a failed commit): every partition's state goes back to its committed
    /// state; the processor stays (the runtime then feeds the batch's inputs again).
    pub fn abort(&mut self) {
        let assigned: Vec<(String, i32)> = self.states.keys().cloned().collect();
        self.states.clear();
        for (t, p) in assigned {
            self.assign(&t, p);
        }
    }

    /// The state of `topic`/`partition`, if assigned.
    pub fn state(&self, topic: &str, partition: i32) -> Option<&State<P::State>> {
        self.states.get(&(topic.to_owned(), partition))
    }
}
