//! Per-partition event-time watermarks with allowed lateness and idle advancement.

use serde::{Deserialize, Serialize};

/// The watermark of one input partition: the highest event time seen minus the allowed
/// lateness. When the partition has been silent for `idle_timeout_ms` of processing time, the
/// watermark keeps advancing with processing time, so the last window of a vehicle that went
/// quiet still closes. The watermark never goes backwards.
///
/// ```
/// use fleet_domain::Watermark;
/// let mut wm = Watermark::new(30_000, 60_000);
/// assert_eq!(wm.current(0), None);
/// wm.observe(100_000, 5);
/// assert_eq!(wm.current(5), Some(70_000));
/// // Silent for 60 s of processing time: from then on it follows the wall clock.
/// assert_eq!(wm.current(60_005 + 10_000), Some(80_000));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    lateness_ms: i64,
    idle_timeout_ms: i64,
    max_event_time: Option<i64>,
    last_seen_processing_ms: i64,
    emitted: Option<i64>,
}

impl Watermark {
    /// A watermark with `lateness_ms` allowed lateness that starts following processing time
    /// after `idle_timeout_ms` without input.
    pub fn new(lateness_ms: i64, idle_timeout_ms: i64) -> Self {
        Self {
            lateness_ms: lateness_ms.max(0),
            idle_timeout_ms: idle_timeout_ms.max(0),
            max_event_time: None,
            last_seen_processing_ms: 0,
            emitted: None,
        }
    }

    /// Records an input with `event_time` arriving at processing time `now_ms`.
    pub fn observe(&mut self, event_time: i64, now_ms: i64) {
        self.max_event_time = Some(
            self.max_event_time
                .map_or(event_time, |m| m.max(event_time)),
        );
        self.last_seen_processing_ms = self.last_seen_processing_ms.max(now_ms);
    }

    /// The watermark at processing time `now_ms` (`None` before any input).
    pub fn current(&mut self, now_ms: i64) -> Option<i64> {
        let max = self.max_event_time?;
        let idle_for = now_ms - self.last_seen_processing_ms - self.idle_timeout_ms;
        let candidate = max - self.lateness_ms + idle_for.max(0);
        let wm = self.emitted.map_or(candidate, |e| e.max(candidate));
        self.emitted = Some(wm);
        Some(wm)
    }

    /// Whether an input with `event_time` is later than the watermark allows.
    pub fn is_late(&mut self, window_end: i64, now_ms: i64) -> bool {
        self.current(now_ms).is_some_and(|wm| window_end <= wm)
    }
}

/// The event time a watermark may trust: the device's own time, but never more than
/// `max_skew_ms` after the moment the pipeline received the reading (`ingest_time`). A device
/// whose clock runs minutes fast would otherwise drag its whole partition's watermark into
/// the future, making every other vehicle's readings late and their silence look like
/// `offline`. The reading itself keeps its event time (it lands in its own, future, windows);
/// only the partition's notion of "how far event time has got" is protected.
///
/// ```
/// use fleet_domain::trusted_event_time;
/// assert_eq!(trusted_event_time(1_000, 1_050, 10_000), 1_000, "honest: unchanged");
/// assert_eq!(trusted_event_time(241_000, 1_050, 10_000), 11_050, "4 min fast: clamped");
/// ```
pub fn trusted_event_time(event_time: i64, ingest_time: i64, max_skew_ms: i64) -> i64 {
    event_time.min(ingest_time.saturating_add(max_skew_ms.max(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fast_clock_cannot_drag_the_watermark_into_the_future() {
        let (skew, lateness) = (10_000, 30_000);
        let mut wm = Watermark::new(lateness, 3_600_000);
        // Honest readings arrive ~50 ms after they were taken; one device is 240 s fast.
        for t in (0..120_000).step_by(1_000) {
            wm.observe(trusted_event_time(t, t + 50, skew), t + 50);
            wm.observe(trusted_event_time(t + 240_000, t + 60, skew), t + 60);
        }
        let now = 119_060;
        let w = wm.current(now).expect("watermark");
        assert!(
            w <= 119_060 + skew - lateness,
            "the watermark stays within the skew of the receive times: {w}"
        );
        assert!(!wm.is_late(119_000 + lateness - skew + 60_000, now));
    }

    #[test]
    fn out_of_order_input_does_not_move_it_back() {
        let mut wm = Watermark::new(10, 1_000_000);
        wm.observe(100, 0);
        assert_eq!(wm.current(0), Some(90));
        wm.observe(50, 1);
        assert_eq!(wm.current(1), Some(90));
        wm.observe(200, 2);
        assert_eq!(wm.current(2), Some(190));
    }

    #[test]
    fn idle_advance_is_monotonic_when_input_resumes() {
        let mut wm = Watermark::new(0, 100);
        wm.observe(1_000, 0);
        assert_eq!(wm.current(100), Some(1_000));
        assert_eq!(wm.current(600), Some(1_500));
        // Input resumes with an event time behind the idle-advanced watermark.
        wm.observe(1_200, 601);
        assert_eq!(wm.current(601), Some(1_500));
        assert!(wm.is_late(1_500, 601));
        assert!(!wm.is_late(1_501, 601));
    }
}
