//! One mutating job per target at a time: a FIFO queue of job ids per
//! target; the head may run, the others wait for a wake-up of their target.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Uuid>,
    notify: Arc<Notify>,
}

#[derive(Default)]
pub struct TargetQueues {
    inner: Mutex<HashMap<String, Queue>>,
}

impl TargetQueues {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Queue>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enqueue(&self, target: &str, id: Uuid) {
        let mut m = self.lock();
        let q = m.entry(target.to_string()).or_default();
        if !q.jobs.contains(&id) {
            q.jobs.push_back(id);
        }
    }

    pub fn head(&self, target: &str) -> Option<Uuid> {
        self.lock()
            .get(target)
            .and_then(|q| q.jobs.front().copied())
    }

    /// The target's wake-up; create the `notified()` future *before*
    /// reading `head` so that no release is missed.
    pub fn notify(&self, target: &str) -> Arc<Notify> {
        self.lock()
            .entry(target.to_string())
            .or_default()
            .notify
            .clone()
    }

    /// The targets whose queue `id` heads.
    pub fn headed_by(&self, id: Uuid) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, q)| q.jobs.front() == Some(&id))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Takes a job off its target's queue and wakes the next ones.
    pub fn remove(&self, target: &str, id: Uuid) {
        let mut m = self.lock();
        if let Some(q) = m.get_mut(target) {
            q.jobs.retain(|j| *j != id);
            q.notify.notify_waiters();
            if q.jobs.is_empty() {
                m.remove(target);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_per_target() {
        let t = TargetQueues::default();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        t.enqueue("x", a);
        t.enqueue("x", b);
        t.enqueue("y", c);
        assert_eq!(t.head("x"), Some(a));
        assert_eq!(t.head("y"), Some(c));
        t.remove("x", a);
        assert_eq!(t.head("x"), Some(b));
        t.remove("x", b);
        assert_eq!(t.head("x"), None);
    }
}
