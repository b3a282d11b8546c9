//! Token buckets that keep one replica's ECS calls inside the account's API limits,
//! and the jittered backoff used when ECS throttles anyway.
//!
//! # Background
//! ECS meters its control-plane calls per account and region with token buckets:
//! RunTask, StartTask and StopTask share one (burst 100, refilled at 40/s), and
//! DescribeTasks and ListTasks another (burst 100, 20/s). A replica that calls
//! faster is throttled, and a throttled call that is retried at once is throttled
//! again. So every ECS call — first attempts and retries alike — first takes a
//! token from the bucket of its family here; when the bucket is empty the call
//! waits until a token is due, so a burst is smoothed to the sustained rate
//! instead of being refused.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// A bucket's shape: how many calls at once, and how many per second after that.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketShape {
    pub burst: u32,
    pub per_second: f64,
}

impl BucketShape {
    /// ECS's bucket for RunTask, StartTask and StopTask.
    pub const ECS_MUTATE: Self = Self {
        burst: 100,
        per_second: 40.0,
    };
    /// ECS's bucket for DescribeTasks and ListTasks.
    pub const ECS_DESCRIBE: Self = Self {
        burst: 100,
        per_second: 20.0,
    };

    /// Parses `BURST/RATE`, e.g. `100/40`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (b, r) = s
            .split_once('/')
            .ok_or_else(|| format!("bucket `{s}` is not `BURST/PER_SECOND`, e.g. 100/40"))?;
        let burst: u32 = b
            .trim()
            .parse()
            .map_err(|_| format!("bucket `{s}`: burst `{b}` is not a whole number"))?;
        let per_second: f64 = r
            .trim()
            .parse()
            .map_err(|_| format!("bucket `{s}`: rate `{r}` is not a number"))?;
        if burst == 0 || !(per_second > 0.0 && per_second.is_finite()) {
            return Err(format!(
                "bucket `{s}`: burst and rate must both be above zero"
            ));
        }
        Ok(Self { burst, per_second })
    }

    /// Calls this bucket admits within `window` starting full: the burst plus what
    /// refills meanwhile. The bound the tests hold the scheduler's calls to.
    pub fn admits_within(&self, window: Duration) -> f64 {
        f64::from(self.burst) + self.per_second * window.as_secs_f64()
    }
}

struct Level {
    tokens: f64,
    at: Instant,
}

/// One token bucket, shared by every call of its family in this process.
pub struct TokenBucket {
    shape: BucketShape,
    level: Mutex<Level>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(shape: BucketShape) -> Self {
        Self {
            shape,
            level: Mutex::new(Level {
                tokens: f64::from(shape.burst),
                at: Instant::now(),
            }),
        }
    }

    pub fn shape(&self) -> BucketShape {
        self.shape
    }

    /// Takes a token now if one is there; otherwise says how long until one is due
    /// (and reserves it, so waiters are served in turn).
    fn reserve(&self) -> Duration {
        let mut l = self.level.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refilled = now.duration_since(l.at).as_secs_f64() * self.shape.per_second;
        l.tokens = (l.tokens + refilled).min(f64::from(self.shape.burst));
        l.at = now;
        l.tokens -= 1.0;
        if l.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-l.tokens / self.shape.per_second)
        }
    }

    /// Waits until this caller's token is due and takes it.
    pub async fn take(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Backoff before retry number `attempt` (1-based): exponential from `base`, capped
/// at `cap`, with full jitter (a uniform draw below the exponential), so replicas
/// that were throttled together do not retry together.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(cap);
    ceiling.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_errors_name_the_part() {
        assert_eq!(
            BucketShape::parse("100/40").unwrap(),
            BucketShape::ECS_MUTATE
        );
        assert!(BucketShape::parse("100").unwrap_err().contains("BURST/"));
        assert!(BucketShape::parse("x/4").unwrap_err().contains("burst `x`"));
        assert!(BucketShape::parse("10/y").unwrap_err().contains("rate `y`"));
        assert!(
            BucketShape::parse("0/4")
                .unwrap_err()
                .contains("above zero")
        );
    }

    #[test]
    fn a_full_bucket_serves_its_burst_then_paces_at_its_rate() {
        let b = TokenBucket::new(BucketShape {
            burst: 3,
            per_second: 10.0,
        });
        for _ in 0..3 {
            assert_eq!(b.reserve(), Duration::ZERO);
        }
        // The fourth and fifth wait one and two tenths of a second (within clock slop).
        let w4 = b.reserve();
        let w5 = b.reserve();
        assert!(
            w4 > Duration::from_millis(90) && w4 <= Duration::from_millis(100),
            "{w4:?}"
        );
        assert!(
            w5 > Duration::from_millis(190) && w5 <= Duration::from_millis(200),
            "{w5:?}"
        );
    }

    #[tokio::test]
    async fn waiting_callers_are_admitted_no_faster_than_the_shape_allows() {
        let shape = BucketShape {
            burst: 5,
            per_second: 100.0,
        };
        let b = std::sync::Arc::new(TokenBucket::new(shape));
        let start = tokio::time::Instant::now();
        let mut handles = Vec::new();
        for _ in 0..25 {
            let b = b.clone();
            handles.push(tokio::spawn(async move {
                b.take().await;
                tokio::time::Instant::now()
            }));
        }
        let mut at = Vec::new();
        for h in handles {
            at.push(h.await.unwrap().duration_since(start));
        }
        at.sort();
        // 5 at once, then one every 10 ms: the 25th is admitted at 0.2 s, no sooner.
        assert!(at[24] >= Duration::from_millis(195), "{:?}", at[24]);
        for (i, t) in at.iter().enumerate() {
            let allowed = shape.admits_within(*t + Duration::from_millis(2));
            assert!(
                (i + 1) as f64 <= allowed,
                "call {i} at {t:?} beyond the bucket"
            );
        }
    }

    #[test]
    fn backoff_grows_and_stays_under_its_cap() {
        let base = Duration::from_millis(50);
        let cap = Duration::from_secs(2);
        for attempt in 1..30 {
            let d = backoff(attempt, base, cap);
            assert!(d <= cap, "{d:?}");
            let exp = base.saturating_mul(1 << (attempt - 1).min(16));
            assert!(d <= exp, "attempt {attempt}: {d:?} above {exp:?}");
        }
    }
}
