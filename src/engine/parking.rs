//! Jobs waiting for their next poll, without a task (issue 12): a timer
//! queue ordered by wake-up time, holding for each job only what its
//! driver needs to go on (the two backoff schedules). Most of a job's life
//! is this wait, so a waiting job costs one entry here, not a task, a
//! tracing span and a cancellation token. One task per engine
//! (`Engine::wake_parked`) takes the due entries and starts their drivers.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

use custos_adapter_core::backoff::Backoff;
use tokio::{sync::Notify, time::Instant};
use uuid::Uuid;

/// What a driver keeps across a parked wait: the steps of its two
/// backoff schedules (their base and ceiling come from the backend's
/// timing, the same for all its jobs: 8 bytes a job instead of 80; at
/// 100,000 waiting jobs ~10 MB, P3 in `docs/benchmarks.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Step of the backoff between retries of failed calls.
    pub retry: u32,
    /// Step of the backoff between polls.
    pub poll: u32,
}

impl Resume {
    /// Where `retry` and `poll` are.
    pub fn of(retry: &Backoff, poll: &Backoff) -> Resume {
        Resume {
            retry: retry.step(),
            poll: poll.step(),
        }
    }
}

#[derive(Default)]
pub struct Parking {
    /// By wake-up time, then id (unique: a job is parked at most once).
    due: Mutex<BTreeMap<(Instant, Uuid), Resume>>,
    /// Told when an entry earlier than every other one arrives.
    earlier: Notify,
}

impl Parking {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<(Instant, Uuid), Resume>> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks `id` until `at`.
    pub fn park(&self, id: Uuid, at: Instant, resume: Resume) {
        let mut due = self.lock();
        let first = due.first_key_value().is_none_or(|((t, _), _)| at < *t);
        due.insert((at, id), resume);
        drop(due);
        if first {
            // A stored permit if the waker is busy: never missed.
            self.earlier.notify_one();
        }
    }

    /// When the earliest entry is due.
    pub fn next(&self) -> Option<Instant> {
        self.lock().first_key_value().map(|((t, _), _)| *t)
    }

    /// Takes every entry due at `now`, earliest first.
    pub fn take_due(&self, now: Instant) -> Vec<(Uuid, Resume)> {
        let mut due = self.lock();
        // Everything strictly after (now, max id) stays.
        let later = due.split_off(&(now, Uuid::max()));
        let ready = std::mem::replace(&mut *due, later);
        ready.into_iter().map(|((_, id), r)| (id, r)).collect()
    }

    /// Waits until an entry earlier than all others arrives.
    pub async fn earlier(&self) {
        self.earlier.notified().await;
    }

    /// How many jobs are parked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn resume() -> Resume {
        let mut poll = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        poll.next_delay();
        let r = Resume::of(
            &Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            &poll,
        );
        assert_eq!(r, Resume { retry: 0, poll: 1 });
        r
    }

    #[tokio::test(start_paused = true)]
    async fn due_entries_come_out_in_order_and_later_ones_stay() {
        let p = Parking::default();
        let now = Instant::now();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        p.park(c, now + Duration::from_secs(3), resume());
        p.park(a, now + Duration::from_secs(1), resume());
        p.park(b, now + Duration::from_secs(1), resume());
        assert_eq!(p.next(), Some(now + Duration::from_secs(1)));
        assert!(p.take_due(now).is_empty());
        let ids: Vec<Uuid> = p
            .take_due(now + Duration::from_secs(2))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, vec![a, b]);
        assert_eq!(p.len(), 1);
        assert_eq!(p.next(), Some(now + Duration::from_secs(3)));
        // Due exactly at `now` counts.
        assert_eq!(p.take_due(now + Duration::from_secs(3)).len(), 1);
        assert_eq!(p.next(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_entry_wakes_the_waiter() {
        let p = Parking::default();
        let now = Instant::now();
        p.park(Uuid::now_v7(), now + Duration::from_secs(10), resume());
        // The first park left a permit: consumed here.
        tokio::time::timeout(Duration::from_millis(1), p.earlier())
            .await
            .unwrap();
        // A later entry does not wake; an earlier one does.
        p.park(Uuid::now_v7(), now + Duration::from_secs(20), resume());
        assert!(
            tokio::time::timeout(Duration::from_millis(1), p.earlier())
                .await
                .is_err()
        );
        p.park(Uuid::now_v7(), now + Duration::from_secs(5), resume());
        tokio::time::timeout(Duration::from_millis(1), p.earlier())
            .await
            .unwrap();
    }
}
