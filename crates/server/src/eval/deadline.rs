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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limit_never_stops_and_a_passed_limit_stops_every_worker() {
        let never = Deadline::after(None);
        assert!(!never.check() && !never.passed());
        let now = Deadline::after(Some(Duration::ZERO));
        assert!(!now.passed(), "nobody has stopped yet");
        assert!(now.check());
        assert!(now.passed());
        // Once seen, it stays seen (the other workers stop at their next check).
        assert!(now.check());
        let later = Deadline::after(Some(Duration::from_secs(3600)));
        assert!(!later.check() && !later.passed());
    }
}
