//! Keyed event-time windows for one input partition: assignment, lateness, closing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// The tag of the reading that opened the window (see [`KeyedWindows::add_tagged`]).
    pub first_tag: i64,
}

/// The open windows of every key of one partition.
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
    open: HashMap<K, Vec<(WindowBounds, WindowAggregate, i64)>>,
    by_end: BTreeSet<(i64, K, i64)>,
    late: HashMap<K, u64>,
    /// Multiset of the first tags of open windows.
    tags: BTreeMap<i64, usize>,
}

impl<K: Eq + Hash + Ord + Clone> KeyedWindows<K> {
    /// Empty state.
    pub fn new(windows: Windows, moving_threshold_kmh: f64) -> Self {
        Self {
            windows,
            moving_threshold_kmh,
            open: HashMap::new(),
            by_end: BTreeSet::new(),
            late: HashMap::new(),
            tags: BTreeMap::new(),
        }
    }

    /// The smallest first tag of the open windows: with Kafka offsets as tags, the offset from
    /// which a replay rebuilds every open window.
    pub fn oldest_tag(&self) -> Option<i64> {
        self.tags.first_key_value().map(|(t, _)| *t)
    }

    /// Number of open windows.
    pub fn open_windows(&self) -> usize {
        self.by_end.len()
    }

    /// The earliest event time (window start) still open, if any: offsets must not be
    /// committed past the first record of this window unless the state is persisted.
    pub fn oldest_open_start(&self) -> Option<i64> {
        self.by_end.first().map(|(_, _, start)| *start)
    }

    /// Adds a reading for `key`; windows whose end is at or before `watermark` are closed and
    /// do not take it.
    pub fn add<Q>(&mut self, key: &Q, sample: Sample, watermark: Option<i64>) -> Outcome
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized + ToOwned<Owned = K>,
    {
        self.add_tagged(key, sample, watermark, 0)
    }

    /// Like [`KeyedWindows::add`], remembering `tag` (e.g. the Kafka offset) for the windows
    /// this reading opens. Tags must not decrease from one call to the next.
    pub fn add_tagged<Q>(
        &mut self,
        key: &Q,
        sample: Sample,
        watermark: Option<i64>,
        tag: i64,
    ) -> Outcome
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized + ToOwned<Owned = K>,
    {
        let wm = watermark.unwrap_or(i64::MIN);
        if self.windows.last_end(sample.t) <= wm {
            *self.late.entry(key.to_owned()).or_insert(0) += 1;
            return Outcome::Late;
        }
        let mut added = 0;
        let mut duplicate = false;
        let list = match self.open.get_mut(key) {
            Some(list) => list,
            None => self
                .open
                .entry(key.to_owned())
                .or_insert_with(|| Vec::with_capacity(2)),
        };
        for w in self.windows.assign(sample.t) {
            if w.end <= wm {
                continue;
            }
            let idx = match list.iter().position(|(b, _, _)| *b == w) {
                Some(i) => i,
                None => {
                    list.push((w, WindowAggregate::new(self.moving_threshold_kmh), tag));
                    self.by_end.insert((w.end, key.to_owned(), w.start));
                    *self.tags.entry(tag).or_insert(0) += 1;
                    list.len() - 1
                }
            };
            match list[idx].1.add(sample) {
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

    /// Closes every window whose end is at or before `watermark`, oldest end first.
    pub fn close_until(&mut self, watermark: i64) -> Vec<Closed<K>> {
        let mut out = Vec::new();
        while let Some((end, _, _)) = self.by_end.first() {
            if *end > watermark {
                break;
            }
            let Some((end, key, start)) = self.by_end.pop_first() else {
                break;
            };
            let bounds = WindowBounds { start, end };
            let mut remove_key = false;
            if let Some(list) = self.open.get_mut(&key) {
                if let Some(i) = list.iter().position(|(b, _, _)| *b == bounds) {
                    let (_, agg, tag) = list.swap_remove(i);
                    if let Some(n) = self.tags.get_mut(&tag) {
                        *n -= 1;
                        if *n == 0 {
                            self.tags.remove(&tag);
                        }
                    }
                    if let Some(summary) = agg.summary() {
                        out.push(Closed {
                            late_records: self.late.get(&key).copied().unwrap_or(0),
                            key: key.clone(),
                            window: bounds,
                            summary,
                            first_tag: tag,
                        });
                    }
                }
                remove_key = list.is_empty();
            }
            if remove_key {
                self.open.remove(&key);
                self.late.remove(&key);
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
        assert_eq!(kw.oldest_open_start(), Some(0));
        let closed = kw.close_until(2000);
        let got: Vec<_> = closed
            .iter()
            .map(|c| (c.key.as_str(), c.window.start))
            .collect();
        assert_eq!(got, vec![("a", 0), ("b", 1000)]);
        assert_eq!(kw.open_windows(), 1);
        assert_eq!(kw.oldest_open_start(), Some(2000));
        assert_eq!(kw.close_until(5000).len(), 1);
        assert_eq!(kw.open_windows(), 0);
        assert!(kw.open.is_empty(), "no state left for closed keys");
    }

    #[test]
    fn oldest_tag_follows_the_open_windows() {
        let mut kw = KeyedWindows::new(Windows::tumbling(1000).expect("valid"), 3.0);
        assert_eq!(kw.oldest_tag(), None);
        kw.add_tagged("a", s(100), None, 10);
        kw.add_tagged("b", s(1100), None, 11);
        kw.add_tagged("a", s(200), None, 12); // same window as tag 10
        kw.add_tagged("c", s(150), None, 13);
        assert_eq!(kw.oldest_tag(), Some(10));
        let closed = kw.close_until(1000);
        let mut tags: Vec<_> = closed.iter().map(|c| c.first_tag).collect();
        tags.sort();
        assert_eq!(tags, vec![10, 13]);
        assert_eq!(kw.oldest_tag(), Some(11));
        kw.close_until(2000);
        assert_eq!(kw.oldest_tag(), None);
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
}
