//! Keyed event-time windows: assignment, lateness, closing.
//!
//! * [`KeyWindows`]: the open windows of one key (a vehicle): what a state store keeps per
//!   key, serializable.
//! * [`EndIndex`]: which key has a window ending when, so that a watermark closes windows in
//!   end order across keys without scanning every key.
//! * [`KeyedWindows`]: both together, for the keys of one partition held in memory.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Added, Sample, Summary, WindowAggregate};
use crate::window::{WindowBounds, Windows};

/// What happened to one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Aggregated into this many windows.
    Added(usize),
    /// Already aggregated (same key and event time): a replay, ignored.
    Duplicate,
    /// Every window it belongs to has closed: not aggregated (goes to the DLQ as `late`).
    Late,
}

/// A closed window of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Closed<K> {
    /// The key (vehicle id).
    pub key: K,
    /// Window bounds.
    pub window: WindowBounds,
    /// The aggregates.
    pub summary: Summary,
    /// Late readings (not aggregated anywhere) seen for this key while the window was open.
    pub late_records: u64,
}

/// The open windows of one key.
///
/// ```
/// use fleet_domain::{KeyWindows, Outcome, Sample, Windows};
/// let w = Windows::tumbling(60_000).unwrap();
/// let s = |t| Sample { t, lat: 4.6, lon: -74.0, speed_kmh: Some(50.0), cargo_temp_c: None };
/// let (mut kw, mut opened) = (KeyWindows::default(), Vec::new());
/// assert_eq!(kw.add(&w, 3.0, s(1_000), None, &mut opened), Outcome::Added(1));
/// assert_eq!(opened, [60_000], "the end of the window it opened");
/// assert_eq!(kw.add(&w, 3.0, s(1_000), None, &mut opened), Outcome::Duplicate);
/// let mut closed = Vec::new();
/// kw.close_until(&"VEH-1", 60_000, &mut closed);
/// assert_eq!(closed[0].summary.count, 1);
/// assert!(kw.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyWindows {
    open: Vec<(WindowBounds, WindowAggregate)>,
    /// Late readings seen while these windows were open.
    late: u64,
}

impl KeyWindows {
    /// Adds `sample`; windows whose end is at or before `watermark` are closed and do not take
    /// it. The end of every window it opens is pushed to `opened` (for an [`EndIndex`]).
    pub fn add(
        &mut self,
        windows: &Windows,
        moving_threshold_kmh: f64,
        sample: Sample,
        watermark: Option<i64>,
        opened: &mut Vec<i64>,
    ) -> Outcome {
        let wm = watermark.unwrap_or(i64::MIN);
        if windows.last_end(sample.t) <= wm {
            if !self.open.is_empty() {
                self.late += 1;
            }
            return Outcome::Late;
        }
        let (mut added, mut duplicate) = (0, false);
        for w in windows.assign(sample.t) {
            if w.end <= wm {
                continue;
            }
            let idx = match self.open.iter().position(|(b, _)| *b == w) {
                Some(i) => i,
                None => {
                    self.open
                        .push((w, WindowAggregate::new(moving_threshold_kmh)));
                    opened.push(w.end);
                    self.open.len() - 1
                }
            };
            match self.open[idx].1.add(sample) {
                Added::Yes => added += 1,
                Added::Duplicate => duplicate = true,
            }
        }
        if added == 0 && duplicate {
            Outcome::Duplicate
        } else {
            Outcome::Added(added)
        }
    }

    /// Closes the windows whose end is at or before `watermark`, oldest end first, into `out`.
    pub fn close_until<K: Clone>(&mut self, key: &K, watermark: i64, out: &mut Vec<Closed<K>>) {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.open.len() {
            if self.open[i].0.end <= watermark {
                due.push(self.open.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|(b, _)| (b.end, b.start));
        for (window, agg) in due {
            if let Some(summary) = agg.summary() {
                out.push(Closed {
                    key: key.clone(),
                    window,
                    summary,
                    late_records: self.late,
                });
            }
        }
        if self.open.is_empty() {
            self.late = 0;
        }
    }

    /// Whether no window is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The ends of the open windows (to rebuild an [`EndIndex`]).
    pub fn ends(&self) -> impl Iterator<Item = i64> + '_ {
        self.open.iter().map(|(b, _)| b.end)
    }
}

/// Which key has a window ending when.
#[derive(Debug, Clone)]
pub struct EndIndex<K: Ord> {
    by_end: BTreeSet<(i64, K)>,
}

impl<K: Ord> Default for EndIndex<K> {
    fn default() -> Self {
        Self {
            by_end: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> EndIndex<K> {
    /// Notes that `key` has a window ending at `end`.
    pub fn insert(&mut self, end: i64, key: K) {
        self.by_end.insert((end, key));
    }

    /// The next (end, key) whose end is at or before `watermark`, removed from the index; its
    /// key's windows up to that end are due ([`KeyWindows::close_until`] with that end).
    pub fn pop_due(&mut self, watermark: i64) -> Option<(i64, K)> {
        if self.by_end.first()?.0 > watermark {
            return None;
        }
        self.by_end.pop_first()
    }

    /// The earliest end indexed.
    pub fn first_end(&self) -> Option<i64> {
        self.by_end.first().map(|(end, _)| *end)
    }

    /// Number of open windows indexed.
    pub fn len(&self) -> usize {
        self.by_end.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.by_end.is_empty()
    }
}

/// The open windows of every key of one partition, in memory.
///
/// ```
/// use fleet_domain::{KeyedWindows, Outcome, Sample, Windows};
/// let mut kw = KeyedWindows::new(Windows::tumbling(60_000).unwrap(), 3.0);
/// let s = |t| Sample { t, lat: 4.6, lon: -74.0, speed_kmh: Some(50.0), cargo_temp_c: None };
/// assert_eq!(kw.add("VEH-1", s(1_000), None), Outcome::Added(1));
/// assert_eq!(kw.add("VEH-1", s(2_000), None), Outcome::Added(1));
/// assert!(kw.close_until(59_999).is_empty());
/// let closed = kw.close_until(60_000);
/// assert_eq!(closed[0].summary.count, 2);
/// assert_eq!(kw.add("VEH-1", s(3_000), Some(60_000)), Outcome::Late);
/// ```
#[derive(Debug, Clone)]
pub struct KeyedWindows<K: Eq + Hash + Ord + Clone> {
    windows: Windows,
    moving_threshold_kmh: f64,
    open: HashMap<K, KeyWindows>,
    index: EndIndex<K>,
    opened: Vec<i64>,
}

impl<K: Eq + Hash + Ord + Clone> KeyedWindows<K> {
    /// Empty state.
    pub fn new(windows: Windows, moving_threshold_kmh: f64) -> Self {
        Self {
            windows,
            moving_threshold_kmh,
            open: HashMap::new(),
            index: EndIndex::default(),
            opened: Vec::new(),
        }
    }

    /// Number of open windows.
    pub fn open_windows(&self) -> usize {
        self.index.len()
    }

    /// Adds a reading for `key`; windows whose end is at or before `watermark` are closed and
    /// do not take it.
    pub fn add<Q>(&mut self, key: &Q, sample: Sample, watermark: Option<i64>) -> Outcome
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized + ToOwned<Owned = K>,
    {
        self.opened.clear();
        let (w, th) = (self.windows, self.moving_threshold_kmh);
        let outcome = match self.open.get_mut(key) {
            Some(kw) => kw.add(&w, th, sample, watermark, &mut self.opened),
            None => {
                let mut kw = KeyWindows::default();
                let outcome = kw.add(&w, th, sample, watermark, &mut self.opened);
                if !kw.is_empty() {
                    self.open.insert(key.to_owned(), kw);
                }
                outcome
            }
        };
        for end in self.opened.drain(..) {
            self.index.insert(end, key.to_owned());
        }
        outcome
    }

    /// Closes every window whose end is at or before `watermark`, oldest end first.
    pub fn close_until(&mut self, watermark: i64) -> Vec<Closed<K>> {
        let mut out = Vec::new();
        while let Some((end, key)) = self.index.pop_due(watermark) {
            if let Some(kw) = self.open.get_mut(&key) {
                kw.close_until(&key, end, &mut out);
                if kw.is_empty() {
                    self.open.remove(&key);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: i64) -> Sample {
        Sample {
            t,
            lat: 4.6,
            lon: -74.0 + t as f64 * 1e-7,
            speed_kmh: Some(30.0),
            cargo_temp_c: Some(5.0),
        }
    }

    #[test]
    fn closes_in_end_order_across_keys_and_forgets_closed_state() {
        let mut kw = KeyedWindows::new(Windows::tumbling(1000).expect("valid"), 3.0);
        kw.add("b", s(1500), None);
        kw.add("a", s(100), None);
        kw.add("a", s(2100), None);
        assert_eq!(kw.open_windows(), 3);
        let closed = kw.close_until(2000);
        let got: Vec<_> = closed
            .iter()
            .map(|c| (c.key.as_str(), c.window.start))
            .collect();
        assert_eq!(got, vec![("a", 0), ("b", 1000)]);
        assert_eq!(kw.open_windows(), 1);
        assert_eq!(kw.close_until(5000).len(), 1);
        assert_eq!(kw.open_windows(), 0);
        assert!(kw.open.is_empty(), "no state left for closed keys");
    }

    #[test]
    fn lateness_duplicates_and_hopping() {
        let mut kw = KeyedWindows::new(Windows::hopping(1000, 500).expect("valid"), 3.0);
        assert_eq!(kw.add("v", s(700), Some(0)), Outcome::Added(2));
        assert_eq!(kw.add("v", s(700), Some(0)), Outcome::Duplicate);
        // Watermark 1000 closed [0,1000) but [500,1500) is open: half-late still counts once.
        assert_eq!(kw.add("v", s(800), Some(1000)), Outcome::Added(1));
        assert_eq!(kw.add("v", s(100), Some(1000)), Outcome::Late);
        let closed = kw.close_until(1500);
        assert_eq!(closed.len(), 2);
        assert_eq!(closed[0].summary.count, 1, "[0,1000) has only t=700");
        assert_eq!(closed[1].summary.count, 2, "[500,1500) has 700 and 800");
        assert_eq!(closed[1].late_records, 1);
    }

    #[test]
    fn a_late_reading_of_a_key_without_open_windows_leaves_no_state() {
        let mut kw = KeyedWindows::new(Windows::tumbling(1000).expect("valid"), 3.0);
        assert_eq!(kw.add("v", s(100), Some(5_000)), Outcome::Late);
        assert!(kw.open.is_empty());
        assert_eq!(kw.open_windows(), 0);
    }

    #[test]
    fn key_windows_survive_serialization() {
        let w = Windows::hopping(1000, 500).expect("valid");
        let mut kw = KeyWindows::default();
        let mut opened = Vec::new();
        kw.add(&w, 3.0, s(700), None, &mut opened);
        kw.add(&w, 3.0, s(800), None, &mut opened);
        let back: KeyWindows =
            serde_json::from_slice(&serde_json::to_vec(&kw).expect("json")).expect("decodes");
        assert_eq!(back, kw);
        let mut ends: Vec<i64> = back.ends().collect();
        ends.sort_unstable();
        assert_eq!(ends, [1000, 1500]);
    }
}
