//! Event-time window assignment: tumbling and hopping (sliding) windows over milliseconds.

use serde::{Deserialize, Serialize};

use crate::DomainError;

/// A half-open window `[start, end)` in event-time milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowBounds {
    /// Inclusive start.
    pub start: i64,
    /// Exclusive end.
    pub end: i64,
}

impl WindowBounds {
    /// Whether `t` lies in the window.
    pub fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }
}

/// Fixed-size windows that start every `slide` ms; `slide == size` is a tumbling window.
///
/// ```
/// use fleet_domain::Windows;
/// let w = Windows::tumbling(60_000).unwrap();
/// let b: Vec<_> = w.assign(61_500).collect();
/// assert_eq!((b[0].start, b[0].end), (60_000, 120_000));
/// let h = Windows::hopping(60_000, 30_000).unwrap();
/// assert_eq!(h.assign(61_500).count(), 2); // [30s, 90s) and [60s, 120s)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Windows {
    size: i64,
    slide: i64,
}

impl Windows {
    /// Tumbling windows of `size_ms`.
    pub fn tumbling(size_ms: i64) -> Result<Self, DomainError> {
        Self::hopping(size_ms, size_ms)
    }

    /// Hopping windows of `size_ms` starting every `slide_ms` (`slide_ms <= size_ms`, and
    /// `size_ms` a multiple of `slide_ms` so that every instant is in the same number of windows).
    pub fn hopping(size_ms: i64, slide_ms: i64) -> Result<Self, DomainError> {
        if size_ms <= 0 || slide_ms <= 0 {
            return Err(DomainError::InvalidWindow(
                "size and slide must be > 0".into(),
            ));
        }
        if slide_ms > size_ms || size_ms % slide_ms != 0 {
            return Err(DomainError::InvalidWindow(format!(
                "size {size_ms} ms must be a multiple of slide {slide_ms} ms"
            )));
        }
        Ok(Self {
            size: size_ms,
            slide: slide_ms,
        })
    }

    /// Window size in ms.
    pub fn size(&self) -> i64 {
        self.size
    }

    /// Slide in ms.
    pub fn slide(&self) -> i64 {
        self.slide
    }

    /// The windows containing `t`, oldest first. Correct for negative times (floor division).
    pub fn assign(&self, t: i64) -> impl Iterator<Item = WindowBounds> + use<> {
        let last_start = t - t.rem_euclid(self.slide);
        let n = self.size / self.slide;
        let (size, slide) = (self.size, self.slide);
        (0..n).rev().map(move |k| {
            let start = last_start - k * slide;
            WindowBounds {
                start,
                end: start + size,
            }
        })
    }

    /// The end of the latest window containing `t`: once the watermark reaches it, `t` can no
    /// longer be aggregated anywhere.
    pub fn last_end(&self, t: i64) -> i64 {
        t - t.rem_euclid(self.slide) + self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_boundaries_are_half_open() {
        let w = Windows::tumbling(1000).expect("valid");
        let at = |t| w.assign(t).collect::<Vec<_>>();
        assert_eq!(
            at(0),
            vec![WindowBounds {
                start: 0,
                end: 1000
            }]
        );
        assert_eq!(
            at(999),
            vec![WindowBounds {
                start: 0,
                end: 1000
            }]
        );
        assert_eq!(
            at(1000),
            vec![WindowBounds {
                start: 1000,
                end: 2000
            }]
        );
        assert_eq!(
            at(-1),
            vec![WindowBounds {
                start: -1000,
                end: 0
            }]
        );
        assert_eq!(w.last_end(999), 1000);
        assert_eq!(w.last_end(1000), 2000);
    }

    #[test]
    fn hopping_windows_overlap() {
        let w = Windows::hopping(1000, 250).expect("valid");
        let b: Vec<_> = w.assign(1100).collect();
        assert_eq!(b.len(), 4);
        assert_eq!(
            b[0],
            WindowBounds {
                start: 250,
                end: 1250
            }
        );
        assert_eq!(
            b[3],
            WindowBounds {
                start: 1000,
                end: 2000
            }
        );
        assert!(b.iter().all(|x| x.contains(1100)));
        assert_eq!(w.last_end(1100), 2000);
    }

    #[test]
    fn invalid_windows_are_rejected() {
        assert!(Windows::tumbling(0).is_err());
        assert!(Windows::hopping(1000, 300).is_err());
        assert!(Windows::hopping(1000, 2000).is_err());
        assert!(Windows::hopping(-5, -5).is_err());
    }
}
