//! Exponential backoff with jitter, as an iterator-like schedule with a reset
//! (the shape of kube-rs' `DefaultBackoff`).

use std::time::Duration;

use rand::Rng;

/// A schedule of delays: `base`, ×2 each step, capped at `max`; each delay
/// is drawn uniformly from [½·d, d] so that many jobs that failed together
/// do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    step: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base: base.max(Duration::from_millis(1)),
            max: max.max(base),
            step: 0,
        }
    }

    /// The undithered delay of the current step.
    pub fn current_ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.step.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay, with jitter; advances the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current_ceiling();
        self.step = self.step.saturating_add(1);
        let ms = ceiling.as_millis().max(1) as u64;
        let low = ms / 2;
        Duration::from_millis(rand::rng().random_range(low..=ms))
    }

    /// The next delay, but never shorter than what the backend asked for.
    pub fn next_delay_honouring(&mut self, retry_after: Option<Duration>) -> Duration {
        let d = self.next_delay();
        match retry_after {
            Some(ra) => d.max(ra),
            None => d,
        }
    }

    pub fn reset(&mut self) {
        self.step = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_cap_with_jitter_in_range() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let ceilings = [100u64, 200, 400, 800, 1000, 1000];
        for c in ceilings {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= c / 2 && d <= c, "delay {d} not in [{}, {c}]", c / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn honours_retry_after() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(20));
        assert!(b.next_delay_honouring(Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }
}
