//! Where rows go: Hive-style time partitions and deterministic file names (pure).
//!
//! ```text
//! <topic>/date=YYYY-MM-DD/hour=HH/part-<kafka partition:05>-<first offset:020>.parquet
//! <topic>/date=YYYY-MM-DD/hour=HH/compacted-<hash>.parquet      (written by `lake compact`)
//! _fleet_lake/offsets/<topic>/<partition>.json                  (the sink's committed position)
//! _fleet_lake/staging/...                                       (files not yet committed)
//! ```

use serde::{Deserialize, Serialize};

/// Directory of the sink's own bookkeeping inside the lake root (readers skip `_` names).
pub const META_DIR: &str = "_fleet_lake";

/// Granularity of the time partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// `date=YYYY-MM-DD/hour=HH`
    #[default]
    Hour,
    /// `date=YYYY-MM-DD`
    Day,
}

impl Granularity {
    /// Length of one partition in ms.
    pub fn span_ms(self) -> i64 {
        match self {
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    /// The partition bucket of an event time (ms since the epoch, UTC).
    pub fn bucket(self, event_time_ms: i64) -> i64 {
        event_time_ms.div_euclid(self.span_ms())
    }

    /// The Hive directory of a bucket, e.g. `date=2026-11-23/hour=07`.
    pub fn dir(self, bucket: i64) -> String {
        let start = bucket * self.span_ms();
        let days = start.div_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        match self {
            Granularity::Hour => {
                let hour = start.rem_euclid(86_400_000) / 3_600_000;
                format!("date={y:04}-{m:02}-{d:02}/hour={hour:02}")
            }
            Granularity::Day => format!("date={y:04}-{m:02}-{d:02}"),
        }
    }

    /// The partition columns this granularity produces, in path order.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Granularity::Hour => &["date", "hour"],
            Granularity::Day => &["date"],
        }
    }
}

/// Proleptic Gregorian date of a day number (days since 1970-01-01); Howard Hinnant's algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// File name of a sink-written file: deterministic from partition and first offset.
pub fn part_file_name(partition: i32, first_offset: i64) -> String {
    format!("part-{partition:05}-{first_offset:020}.parquet")
}

/// Parses a sink-written file name back into (partition, first offset).
pub fn parse_part_file_name(name: &str) -> Option<(i32, i64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (p, o) = rest.split_once('-')?;
    Some((p.parse().ok()?, o.parse().ok()?))
}

/// Relative path of a data file.
pub fn data_path(topic: &str, dir: &str, file: &str) -> String {
    format!("{topic}/{dir}/{file}")
}

/// Relative path of the staging copy of a data file.
pub fn staging_path(data_path: &str) -> String {
    format!("{META_DIR}/staging/{data_path}")
}

/// Where a file of the writer that claimed its partition at `epoch` waits for its commit:
/// the epoch keeps a zombie writer's staged file from replacing its successor's.
pub fn staging_path_at(data_path: &str, epoch: u64) -> String {
    if epoch == 0 {
        return staging_path(data_path);
    }
    format!("{META_DIR}/staging/{data_path}.e{epoch}")
}

/// Relative path of a partition's committed position.
pub fn offsets_path(topic: &str, partition: i32) -> String {
    format!("{META_DIR}/offsets/{topic}/{partition}.json")
}

/// Parses `key=value` partition segments of a relative path (`date=...`, `hour=...`).
pub fn partition_values(path: &str) -> Vec<(&str, &str)> {
    path.split('/')
        .filter_map(|seg| seg.split_once('='))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_are_utc_dates_and_hours() {
        let g = Granularity::Hour;
        // 2026-11-23T07:15:00Z
        let t = 1_795_418_100_000;
        assert_eq!(g.dir(g.bucket(t)), "date=2026-11-23/hour=07");
        assert_eq!(g.dir(g.bucket(0)), "date=1970-01-01/hour=00");
        assert_eq!(g.dir(g.bucket(-1)), "date=1969-12-31/hour=23");
        assert_eq!(
            Granularity::Day.dir(Granularity::Day.bucket(t)),
            "date=2026-11-23"
        );
        // Leap day.
        assert_eq!(g.dir(g.bucket(951_782_400_000)), "date=2000-02-29/hour=00");
    }

    #[test]
    fn civil_dates_match_a_day_by_day_walk() {
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        for days in 0..40_000 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let len = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn file_names_round_trip_and_sort_by_offset() {
        let a = part_file_name(3, 99);
        let b = part_file_name(3, 100);
        assert_eq!(parse_part_file_name(&a), Some((3, 99)));
        assert!(a < b);
        assert_eq!(parse_part_file_name("compacted-abc.parquet"), None);
        assert_eq!(
            partition_values("fleet.telemetry/date=2026-01-02/hour=05/x.parquet"),
            vec![("date", "2026-01-02"), ("hour", "05")]
        );
    }
}
