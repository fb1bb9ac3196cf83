//! Rate limiting: a token bucket per client, pure (time is a parameter), shared by the HTTP
//! edges (http-ingest counts records, the API counts requests).

/// A token bucket: `rate` tokens per second up to `capacity`. Time is a parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last_ms: i64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn new(rate_per_sec: f64, capacity: u32, now_ms: i64) -> Self {
        Self {
            capacity: f64::from(capacity),
            rate: rate_per_sec,
            tokens: f64::from(capacity),
            last_ms: now_ms,
        }
    }

    /// Takes `n` tokens at `now_ms` even if that leaves the bucket in debt (a cost known only
    /// after the work was done); later takes wait until the debt is paid.
    pub fn charge(&mut self, n: u32, now_ms: i64) {
        self.refill(now_ms);
        self.tokens -= f64::from(n);
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Takes `n` tokens at `now_ms`, or says in how many milliseconds there will be enough
    /// (`u64::MAX` if `n` exceeds the capacity: never).
    pub fn take(&mut self, n: u32, now_ms: i64) -> Result<(), u64> {
        self.refill(now_ms);
        let n = f64::from(n);
        if n <= self.tokens {
            self.tokens -= n;
            Ok(())
        } else if n > self.capacity || self.rate <= 0.0 {
            Err(u64::MAX)
        } else {
            Err(((n - self.tokens) / self.rate * 1000.0).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate_up_to_its_capacity() {
        let mut b = Bucket::new(10.0, 20, 0);
        assert_eq!(b.take(20, 0), Ok(()));
        assert_eq!(b.take(1, 0), Err(100), "one token takes 100 ms at 10/s");
        assert_eq!(b.take(5, 0), Err(500));
        assert_eq!(b.take(5, 500), Ok(()));
        // A long pause refills to the capacity, not beyond.
        assert_eq!(b.take(20, 1_000_000), Ok(()));
        assert!(b.take(1, 1_000_000).is_err());
        // More than the capacity: never.
        assert_eq!(b.take(21, 9_000_000), Err(u64::MAX));
        // A clock going backwards takes nothing and gives nothing.
        let mut b = Bucket::new(10.0, 20, 1000);
        assert_eq!(b.take(20, 0), Ok(()));
        assert!(b.take(1, 500).is_err());
    }

    /// A cost known only afterwards (rows a listing scanned) is charged as debt: the next
    /// requests wait until the bucket is positive again.
    #[test]
    fn a_charge_may_leave_debt() {
        let mut b = Bucket::new(10.0, 10, 0);
        assert_eq!(b.take(1, 0), Ok(()));
        b.charge(29, 0);
        assert_eq!(
            b.take(1, 0),
            Err(2_100),
            "20 tokens of debt plus one at 10/s"
        );
        assert_eq!(b.take(1, 2_100), Ok(()));
    }
}
