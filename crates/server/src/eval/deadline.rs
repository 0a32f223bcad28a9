//! Stopping a batch past its time limit ([`super::Evaluator::evaluate_batch_within`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// When a batch must stop. Checked by every worker between bootstrap steps; once one has seen it pass, all stop.
pub struct Deadline {
    at: Option<Instant>,
    passed: AtomicBool,
}

impl Deadline {
    /// A deadline `limit` from now (None: never).
    pub fn after(limit: Option<Duration>) -> Self {
        Self { at: limit.map(|l| Instant::now() + l), passed: AtomicBool::new(false) }
    }

    /// Whether the work should stop now (and remember it).
    pub fn check(&self) -> bool {
        if self.passed.load(Ordering::Relaxed) {
            return true;
        }
        let over = self.at.is_some_and(|at| Instant::now() >= at);
        if over {
            self.passed.store(true, Ordering::Relaxed);
        }
        over
    }

    /// Whether some worker stopped (the work is unfinished). A batch that finished just before its deadline did not.
    pub fn passed(&self) -> bool {
        self.passed.load(Ordering::Relaxed)
    }
}
