//! One mutating job per target at a time: a FIFO queue of job ids per
//! target; the head may run, the others wait for a wake-up of their target.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;
use uuid::Uuid;

/// A target's queue. Most targets have one job and nobody waiting (P3:
/// 100,000 targets, one job each), so the head is held inline and the rest
/// (the jobs behind it and the wake-up) behind one pointer, allocated by
/// the first job that queues behind the head or waits for its turn: a
/// queue of one job is its map entry and the target's name, 40 bytes and
/// the name (80 with the rest inline).
struct Queue {
    head: Uuid,
    rest: Option<Box<Rest>>,
}

#[derive(Default)]
struct Rest {
    behind: VecDeque<Uuid>,
    notify: Option<Arc<Notify>>,
}

impl Queue {
    fn behind(&self) -> impl Iterator<Item = &Uuid> {
        self.rest.iter().flat_map(|r| r.behind.iter())
    }

    /// Wakes every job waiting for a turn on this target.
    fn wake(&self) {
        if let Some(n) = self.rest.as_ref().and_then(|r| r.notify.as_ref()) {
            n.notify_waiters();
        }
    }
}

#[derive(Default)]
pub struct TargetQueues {
    inner: Mutex<HashMap<Box<str>, Queue>>,
}

impl TargetQueues {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Queue>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enqueue(&self, target: &str, id: Uuid) {
        let mut m = self.lock();
        match m.get_mut(target) {
            None => {
                m.insert(
                    target.into(),
                    Queue {
                        head: id,
                        rest: None,
                    },
                );
            }
            Some(q) => {
                if q.head != id && !q.behind().any(|j| *j == id) {
                    q.rest.get_or_insert_default().behind.push_back(id);
                }
            }
        }
    }

    pub fn head(&self, target: &str) -> Option<Uuid> {
        self.lock().get(target).map(|q| q.head)
    }

    /// The target's wake-up, told whenever a job leaves its queue; `None`
    /// when the target has no queue (no job of it can get a turn). Create
    /// the `notified()` future *before* reading `head` so that no release
    /// is missed.
    pub fn notify(&self, target: &str) -> Option<Arc<Notify>> {
        self.lock().get_mut(target).map(|q| {
            q.rest
                .get_or_insert_default()
                .notify
                .get_or_insert_with(Default::default)
                .clone()
        })
    }

    /// The targets whose queue `id` heads.
    pub fn headed_by(&self, id: Uuid) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, q)| q.head == id)
            .map(|(t, _)| t.to_string())
            .collect()
    }

    /// Takes a job off its target's queue and wakes the next ones.
    pub fn remove(&self, target: &str, id: Uuid) {
        let mut m = self.lock();
        let Some(q) = m.get_mut(target) else {
            return;
        };
        if q.head == id {
            match q.rest.as_mut().and_then(|r| r.behind.pop_front()) {
                Some(next) => q.head = next,
                None => {
                    q.wake();
                    m.remove(target);
                    return;
                }
            }
        } else if let Some(r) = q.rest.as_mut() {
            r.behind.retain(|j| *j != id);
        }
        q.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_of_one_job_is_small() {
        // P3 holds 100,000 of these: the rest is behind one pointer.
        assert!(std::mem::size_of::<Queue>() <= 24);
        assert!(std::mem::size_of::<Box<str>>() <= 16);
    }

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

    #[test]
    fn a_job_behind_another_leaves_the_queue_and_enqueueing_twice_adds_nothing() {
        let t = TargetQueues::default();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        for id in [a, b, c, a, b] {
            t.enqueue("x", id);
        }
        t.remove("x", b);
        assert_eq!(t.head("x"), Some(a));
        t.remove("x", a);
        assert_eq!(t.head("x"), Some(c));
        assert_eq!(t.headed_by(c), vec!["x".to_string()]);
        assert!(t.headed_by(a).is_empty());
    }

    #[tokio::test]
    async fn waiters_are_woken_when_the_head_leaves_and_a_gone_target_has_no_wake_up() {
        let t = TargetQueues::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(t.notify("x").is_none());
        t.enqueue("x", a);
        t.enqueue("x", b);
        let n = t.notify("x").expect("a queue");
        let woken = n.notified();
        t.remove("x", a);
        woken.await;
        assert_eq!(t.head("x"), Some(b));
        // The last job leaving wakes waiters too, and the queue goes.
        let n = t.notify("x").expect("a queue");
        let woken = n.notified();
        t.remove("x", b);
        woken.await;
        assert!(t.notify("x").is_none());
    }
}
