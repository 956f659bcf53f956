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
        let ms = u64::try_from(ceiling.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
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

    /// The next delay when the backend asked for `retry_after`: what it
    /// asked, but at most `cap`, plus a random spread of up to a tenth of
    /// that (at least 1 s), so that many jobs throttled by the same answer
    /// do not all wake in the same second; never shorter than the schedule's
    /// own next delay. Without `retry_after` it is [`Backoff::next_delay`]
    /// (capped too). Advances the schedule. Saturating: no input panics.
    pub fn next_delay_honouring_capped(
        &mut self,
        retry_after: Option<Duration>,
        cap: Duration,
    ) -> Duration {
        let own = self.next_delay();
        let Some(asked) = retry_after else {
            return own.min(cap);
        };
        let asked = asked.min(cap);
        let spread = (asked / 10).max(Duration::from_secs(1));
        let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
        let jitter = Duration::from_millis(rand::rng().random_range(0..=spread_ms));
        asked.saturating_add(jitter).max(own.min(cap))
    }

    pub fn reset(&mut self) {
        self.step = 0;
    }

    /// How many delays were taken since the start or the last reset: with
    /// `base` and `max`, all that a schedule is (a waiting job keeps only
    /// this; [`Backoff::at_step`] makes the schedule again).
    pub fn step(&self) -> u32 {
        self.step
    }

    /// This schedule, as it is after `step` delays.
    pub fn at_step(mut self, step: u32) -> Self {
        self.step = step;
        self
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
    fn a_schedule_made_again_at_its_step_goes_on_where_it_was() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        b.next_delay();
        b.next_delay();
        let again =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(1000)).at_step(b.step());
        assert_eq!(again.step(), 2);
        assert_eq!(again.current_ceiling(), b.current_ceiling());
        assert_eq!(again.current_ceiling(), Duration::from_millis(400));
    }

    #[test]
    fn capped_retry_after_is_spread_and_never_panics() {
        let cap = Duration::from_secs(60);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
            // 56836 years asked for: capped at 60 s, plus at most 6 s.
            let d =
                b.next_delay_honouring_capped(Some(Duration::from_secs(1_792_000_000_000)), cap);
            assert!(d >= cap && d <= cap + Duration::from_secs(6), "{d:?}");
            seen.insert(d.as_millis() / 100);
            // A short Retry-After: what was asked, spread over up to 1 s.
            let d = b.next_delay_honouring_capped(Some(Duration::from_secs(2)), cap);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_secs(3),
                "{d:?}"
            );
        }
        assert!(seen.len() > 10, "jittered: {} distinct delays", seen.len());
        let mut b = Backoff::new(Duration::from_millis(10), Duration::MAX);
        for _ in 0..100 {
            b.next_delay_honouring_capped(Some(Duration::MAX), Duration::MAX);
            b.next_delay_honouring(Some(Duration::MAX));
        }
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(20));
        assert!(
            b.next_delay_honouring_capped(None, Duration::from_secs(1)) <= Duration::from_secs(1)
        );
    }

    #[test]
    fn honours_retry_after() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(20));
        assert!(b.next_delay_honouring(Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }
}
