//! Retry delays: exponential backoff with jitter, so that many nodes retrying a lost Redis or
//! NATS do not come back in step.

use std::time::Duration;

/// The delay before retry `attempt` (0-based): `min * 2^attempt` capped at `max`, then a random
/// point in the upper half of that.
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    use rand::Rng as _;
    let exp = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    let half = exp / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..40 {
            let d = backoff(attempt, min, max);
            let exp = min.saturating_mul(1 << attempt.min(16)).min(max);
            assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?}");
        }
    }
}
