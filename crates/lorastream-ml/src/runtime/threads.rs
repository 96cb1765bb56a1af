//! CPU thread budgets for the two kinds of work that share a machine:
//! serving (the chat worker) and learning (training and evaluation).
//!
//! libtorch's intra-op thread count is set per calling thread (OpenMP's and
//! MKL's per-thread settings), so each kind sets its own before each step.
//! Alone, a kind uses its `alone` count (all cores by default); while the
//! other kind is busy too, each uses its `shared` count, so that together
//! they do not ask for more threads than there are cores (oversubscribed
//! OpenMP teams spin against each other and both slow down many-fold).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Which work a thread does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Serve,
    Learn,
}

/// A kind's thread counts (0 = not set: see [`configure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    pub alone: usize,
    pub shared: usize,
}

struct Slot {
    busy: AtomicUsize,
    alone: AtomicUsize,
    shared: AtomicUsize,
}

static SLOTS: [Slot; 2] = [
    Slot {
        busy: AtomicUsize::new(0),
        alone: AtomicUsize::new(0),
        shared: AtomicUsize::new(0),
    },
    Slot {
        busy: AtomicUsize::new(0),
        alone: AtomicUsize::new(0),
        shared: AtomicUsize::new(0),
    },
];

thread_local! {
    /// What this thread last asked libtorch for (0: nothing yet).
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

fn slot(w: Work) -> &'static Slot {
    &SLOTS[w as usize]
}

fn other(w: Work) -> Work {
    match w {
        Work::Serve => Work::Learn,
        Work::Learn => Work::Serve,
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets both budgets. Zeros take the defaults: alone, every core; while
/// both are busy, serving gets `serve.shared` (default half the cores, at
/// least one) and learning the rest (at least one).
pub fn configure(serve: Budget, learn_alone: usize) {
    let n = cores();
    let or = |v: usize, d: usize| if v == 0 { d } else { v };
    let serve_shared = or(serve.shared, (n / 2).max(1));
    let set = |w: Work, alone: usize, shared: usize| {
        slot(w).alone.store(alone, Ordering::Relaxed);
        slot(w).shared.store(shared, Ordering::Relaxed);
    };
    set(Work::Serve, or(serve.alone, n), serve_shared);
    set(
        Work::Learn,
        or(learn_alone, n),
        n.saturating_sub(serve_shared).max(1),
    );
}

/// The threads `w` should use now.
pub fn threads_for(w: Work) -> usize {
    let s = slot(w);
    if s.alone.load(Ordering::Relaxed) == 0 {
        configure(Budget::default(), 0);
    }
    let busy_other = slot(other(w)).busy.load(Ordering::Relaxed) > 0;
    let n = if busy_other { &s.shared } else { &s.alone };
    n.load(Ordering::Relaxed).max(1)
}

/// Sets this thread's libtorch threads for `w` (cheap when unchanged).
pub fn apply(w: Work) {
    let n = threads_for(w);
    CURRENT.with(|c| {
        if c.get() != n {
            tch::set_num_threads(n as i32);
            c.set(n);
        }
    });
}

/// Marks `w` busy while the guard lives (the other kind shrinks to its share).
pub fn busy(w: Work) -> Busy {
    slot(w).busy.fetch_add(1, Ordering::Relaxed);
    Busy(w)
}

pub struct Busy(Work);

impl Drop for Busy {
    fn drop(&mut self) {
        slot(self.0).busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_shrinks_to_its_share_while_the_other_is_busy() {
        configure(
            Budget {
                alone: 4,
                shared: 1,
            },
            4,
        );
        let learn_shared = cores().saturating_sub(1).max(1);
        assert_eq!(threads_for(Work::Serve), 4);
        let learning = busy(Work::Learn);
        assert_eq!(threads_for(Work::Serve), 1);
        assert_eq!(threads_for(Work::Learn), 4, "serving is idle");
        let serving = busy(Work::Serve);
        assert_eq!(threads_for(Work::Learn), learn_shared);
        drop((learning, serving));
        assert_eq!(threads_for(Work::Serve), 4);
    }
}
