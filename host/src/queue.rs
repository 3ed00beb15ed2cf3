//! A pool's bounded two-class queue: interactive tasks dispatch before batch tasks, each
//! class in arrival order. The bound is enforced here; who gets in is the admission
//! policy's call.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use orchd_contracts::Priority;

use crate::task::Task;

const CLASSES: [Priority; 2] = [Priority::Interactive, Priority::Batch];

pub struct Queued {
    pub task: Arc<Task>,
    pub enqueued_at: Instant,
}

pub struct ClassQueues {
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

    /// Tasks that would dispatch before a new task of class `p`.
    pub fn ahead_of(&self, p: Priority) -> u32 {
        match p {
            Priority::Interactive => self.depth_of(Priority::Interactive),
            Priority::Batch => self.depth(),
        }
    }

    /// Appends a task to `class`; returns its 0-based position within the class. The
    /// caller checked capacity (the admission path holds the queue lock throughout).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::tests::task;

    #[test]
    fn interactive_dispatches_first_each_class_in_order() {
        let mut q = ClassQueues::new(4);
        let now = Instant::now();
        assert_eq!(q.push(Priority::Batch, task("b1"), now), 0);
        assert_eq!(q.push(Priority::Interactive, task("i1"), now), 0);
        assert_eq!(q.push(Priority::Batch, task("b2"), now), 1);
        assert_eq!(q.push(Priority::Interactive, task("i2"), now), 1);
        assert!(q.is_full());
        assert_eq!(q.ahead_of(Priority::Interactive), 2);
        assert_eq!(q.ahead_of(Priority::Batch), 4);
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
