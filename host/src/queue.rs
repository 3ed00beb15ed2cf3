//! A pool's bounded two-class queue: interactive tasks dispatch before batch tasks, each
//! class in arrival order. The bound is enforced here; who gets in is the admission
//! policy's call.
//!
//! [`PoolQueue`] is the queue's one owner: its lock is private to this module and every
//! operation is one short critical section (no guest call, no store call, no syscall runs
//! under it). Admission decides on an owned [`View`] and applies the decision with
//! [`PoolQueue::apply`] only if the view still holds; the dispatcher places the head
//! outside the lock and takes it with [`PoolQueue::pop_if_head`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use orchd_contracts::Priority;

use crate::task::Task;

const CLASSES: [Priority; 2] = [Priority::Interactive, Priority::Batch];

pub struct Queued {
    pub task: Arc<Task>,
    pub enqueued_at: Instant,
}

struct ClassQueues {
    classes: [VecDeque<Queued>; 2],
    capacity: u32,
}

fn index(p: Priority) -> usize {
    match p {
        Priority::Interactive => 0,
        Priority::Batch => 1,
    }
}

impl ClassQueues {
    pub fn new(capacity: u32) -> Self {
        Self {
            classes: [VecDeque::new(), VecDeque::new()],
            capacity,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn depth(&self) -> u32 {
        (self.classes[0].len() + self.classes[1].len()) as u32
    }

    pub fn depth_of(&self, p: Priority) -> u32 {
        self.classes[index(p)].len() as u32
    }

    pub fn is_full(&self) -> bool {
        self.depth() >= self.capacity
    }

    /// Appends a task to `class`; returns its 0-based position within the class. The
    /// caller checked capacity under the same lock.
    pub fn push(&mut self, class: Priority, task: Arc<Task>, now: Instant) -> u32 {
        debug_assert!(!self.is_full());
        let q = &mut self.classes[index(class)];
        q.push_back(Queued {
            task,
            enqueued_at: now,
        });
        (q.len() - 1) as u32
    }

    /// The task that dispatches next, without removing it.
    pub fn peek(&self) -> Option<&Queued> {
        self.classes.iter().find_map(VecDeque::front)
    }

    /// The next task to dispatch: interactive first.
    pub fn pop(&mut self) -> Option<Queued> {
        self.classes.iter_mut().find_map(VecDeque::pop_front)
    }

    pub fn remove(&mut self, task_id: &str) -> Option<Queued> {
        self.classes.iter_mut().find_map(|q| {
            let at = q.iter().position(|e| e.task.id == task_id)?;
            q.remove(at)
        })
    }

    /// Class and 0-based position within the class.
    pub fn position(&self, task_id: &str) -> Option<(Priority, u32)> {
        CLASSES.into_iter().find_map(|p| {
            self.classes[index(p)]
                .iter()
                .position(|e| e.task.id == task_id)
                .map(|at| (p, at as u32))
        })
    }

    /// The `n` oldest entries of class `p`, oldest first.
    pub fn oldest(&self, p: Priority, n: usize) -> impl Iterator<Item = &Queued> {
        self.classes[index(p)].iter().take(n)
    }

    pub fn contains(&self, task_id: &str) -> bool {
        self.position(task_id).is_some()
    }
}

/// What admission decides on: the queue as it was, owned (no lock held while a policy
/// reads it).
#[derive(Debug, Clone)]
pub struct View {
    /// Tasks that joined the queue before this view was taken (see [`PoolQueue::apply`]).
    pub joined: u64,
    pub capacity: u32,
    depths: [u32; 2],
    /// The oldest entries of each class, oldest first: id and when it was enqueued.
    oldest: [Vec<(String, Instant)>; 2],
}

impl View {
    pub fn depth(&self) -> u32 {
        self.depths[0] + self.depths[1]
    }

    pub fn depth_of(&self, p: Priority) -> u32 {
        self.depths[index(p)]
    }

    pub fn is_full(&self) -> bool {
        self.depth() >= self.capacity
    }

    /// Tasks that would dispatch before a new task of class `p`.
    pub fn ahead_of(&self, p: Priority) -> u32 {
        match p {
            Priority::Interactive => self.depth_of(Priority::Interactive),
            Priority::Batch => self.depth(),
        }
    }

    /// The oldest entries of class `p` the view holds, oldest first.
    pub fn oldest(&self, p: Priority) -> impl Iterator<Item = &(String, Instant)> {
        self.oldest[index(p)].iter()
    }

    /// Whether `task_id` is among the entries the view holds.
    pub fn shows(&self, task_id: &str) -> bool {
        self.oldest.iter().flatten().any(|(id, _)| id == task_id)
    }
}

/// Why [`PoolQueue::apply`] did not apply a decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Stale {
    /// Another task joined the queue after the view: decide again on a new one.
    Joined,
    /// The task to evict is no longer queued: decide again.
    VictimGone,
    /// The queue is full (a decision validated on the view never gets here).
    Full,
}

/// An applied admission: the task's position in its class and the task it evicted.
pub struct Applied {
    pub position: u32,
    pub evicted: Option<Queued>,
}

/// A pool's queue and its one lock (see the module's documentation).
pub struct PoolQueue {
    inner: Mutex<Owned>,
}

struct Owned {
    queues: ClassQueues,
    /// Tasks that ever joined: a view taken before the latest join is stale.
    joined: u64,
}

impl PoolQueue {
    pub fn new(capacity: u32) -> Self {
        Self {
            inner: Mutex::new(Owned {
                queues: ClassQueues::new(capacity),
                joined: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Owned> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The queue now, with up to `oldest` entries of each class.
    pub fn view(&self, oldest: usize) -> View {
        let q = self.lock();
        let entries = |p| {
            q.queues
                .oldest(p, oldest)
                .map(|e| (e.task.id.clone(), e.enqueued_at))
                .collect()
        };
        View {
            joined: q.joined,
            capacity: q.queues.capacity(),
            depths: [
                q.queues.depth_of(Priority::Interactive),
                q.queues.depth_of(Priority::Batch),
            ],
            oldest: [entries(Priority::Interactive), entries(Priority::Batch)],
        }
    }

    /// Applies an accept (evicting `victim` first, if any) decided on `view`, only if the
    /// view still holds: no task joined since it was taken (tasks that left only made
    /// room) and the victim is still queued. `task` joins class `class`.
    pub fn apply(
        &self,
        view: &View,
        victim: Option<&str>,
        class: Priority,
        task: &Arc<Task>,
        now: Instant,
    ) -> Result<Applied, Stale> {
        let mut q = self.lock();
        if q.joined != view.joined {
            return Err(Stale::Joined);
        }
        if victim.is_some_and(|v| !q.queues.contains(v)) {
            return Err(Stale::VictimGone);
        }
        if victim.is_none() && q.queues.is_full() {
            return Err(Stale::Full);
        }
        let evicted = victim.and_then(|v| q.queues.remove(v));
        task.set_queue_position(q.queues.depth_of(class));
        let position = q.queues.push(class, Arc::clone(task), now);
        q.joined += 1;
        Ok(Applied { position, evicted })
    }

    /// The task that dispatches next, and the queue's depth.
    pub fn head(&self) -> Option<(Arc<Task>, u32)> {
        let q = self.lock();
        q.queues
            .peek()
            .map(|e| (Arc::clone(&e.task), q.queues.depth()))
    }

    /// Takes `task` off the queue if it is still the head (it may have been canceled, or
    /// an interactive task may have joined ahead of it, since [`head`](Self::head)).
    pub fn pop_if_head(&self, task: &Arc<Task>) -> bool {
        let mut q = self.lock();
        if q.queues.peek().is_some_and(|e| Arc::ptr_eq(&e.task, task)) {
            q.queues.pop();
            true
        } else {
            false
        }
    }

    /// Removes this very task (not another with its id), if it is queued.
    pub fn remove_task(&self, task: &Arc<Task>) -> bool {
        let mut q = self.lock();
        let found = q.queues.position(&task.id).is_some_and(|(p, at)| {
            q.queues.classes[index(p)]
                .get(at as usize)
                .is_some_and(|e| Arc::ptr_eq(&e.task, task))
        });
        found && q.queues.remove(&task.id).is_some()
    }

    /// Removes the task with this id, if it is queued.
    pub fn remove(&self, task_id: &str) -> Option<Queued> {
        self.lock().queues.remove(task_id)
    }

    pub fn depth(&self) -> u32 {
        self.lock().queues.depth()
    }

    /// Depth per class: interactive, batch.
    pub fn depths(&self) -> [u32; 2] {
        let q = self.lock();
        [
            q.queues.depth_of(Priority::Interactive),
            q.queues.depth_of(Priority::Batch),
        ]
    }

    /// Class and 0-based position within the class.
    pub fn position(&self, task_id: &str) -> Option<(Priority, u32)> {
        self.lock().queues.position(task_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::tests::task;

    #[test]
    fn a_decision_applies_only_to_the_view_it_was_made_on() {
        let q = PoolQueue::new(2);
        let now = Instant::now();
        let first = q.view(4);
        let second = q.view(4);
        let a = task("a");
        assert_eq!(
            q.apply(&first, None, Priority::Batch, &a, now)
                .map(|x| x.position),
            Ok(0)
        );
        // Another task joined after `second` was taken: decide again.
        let b = task("b");
        assert_eq!(
            q.apply(&second, None, Priority::Batch, &b, now).err(),
            Some(Stale::Joined)
        );
        let fresh = q.view(4);
        assert!(fresh.shows("a") && fresh.depth() == 1);
        // Leaving makes room and keeps the view valid.
        let left = q.view(4);
        assert!(q.remove("a").is_some());
        assert!(q.apply(&left, None, Priority::Batch, &b, now).is_ok());
        // Evicting a task that already left is stale.
        let view = q.view(4);
        assert!(q.remove("b").is_some());
        let c = task("c");
        assert_eq!(
            q.apply(&view, Some("b"), Priority::Batch, &c, now).err(),
            Some(Stale::VictimGone)
        );
    }

    #[test]
    fn the_head_is_taken_only_while_it_is_the_head() {
        let q = PoolQueue::new(4);
        let now = Instant::now();
        let (b, i) = (task("b"), task("i"));
        q.apply(&q.view(0), None, Priority::Batch, &b, now).ok();
        let (head, depth) = q.head().unwrap();
        assert!(Arc::ptr_eq(&head, &b) && depth == 1);
        // An interactive task joins ahead of it before the dispatcher takes it.
        q.apply(&q.view(0), None, Priority::Interactive, &i, now)
            .ok();
        assert!(!q.pop_if_head(&b));
        assert!(q.pop_if_head(&i));
        // A task with the same id is not this task.
        assert!(!q.remove_task(&task("b")));
        assert!(q.remove_task(&b));
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn interactive_dispatches_first_each_class_in_order() {
        let mut q = ClassQueues::new(4);
        let now = Instant::now();
        assert_eq!(q.push(Priority::Batch, task("b1"), now), 0);
        assert_eq!(q.push(Priority::Interactive, task("i1"), now), 0);
        assert_eq!(q.push(Priority::Batch, task("b2"), now), 1);
        assert_eq!(q.push(Priority::Interactive, task("i2"), now), 1);
        assert!(q.is_full());
        assert_eq!(q.position("b2"), Some((Priority::Batch, 1)));
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|e| e.task.id.clone())).collect();
        assert_eq!(order, ["i1", "i2", "b1", "b2"]);
    }

    #[test]
    fn remove_and_oldest() {
        let mut q = ClassQueues::new(8);
        let now = Instant::now();
        for id in ["a", "b", "c"] {
            q.push(Priority::Batch, task(id), now);
        }
        assert!(q.remove("b").is_some());
        assert!(q.remove("b").is_none());
        assert!(!q.contains("b"));
        let oldest: Vec<_> = q
            .oldest(Priority::Batch, 1)
            .map(|e| e.task.id.clone())
            .collect();
        assert_eq!(oldest, ["a"]);
        assert_eq!(q.depth(), 2);
    }
}
