//! A capture confirms one position in the database's log, and reading ahead
//! hands out several batches before the first is settled: a batch's position
//! becomes confirmable only once it and every batch before it are settled.
//! Batches settle in read order, so counting settled records tells which.
//! Positions are handed out in log order, so the last one settled is the newest.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a handed-out batch may stay unsettled before a capture lets its
/// log connection go, so a server shutting down or failing over is not held
/// by it; reading resumes from the confirmed position.
pub const RELEASE_AFTER: Duration = Duration::from_secs(5);

/// What a capture says when it lets its connection go for that reason.
pub const RELEASE_REASON: &str = "a batch has been applied for longer than 5s";

/// Shared by a capture, which hands batches out, and its acker, which settles
/// them; cheap to clone. `P` is the log's position (an LSN, a binlog position).
pub struct Confirmations<P>(Arc<Mutex<State<P>>>);

impl<P> Clone for Confirmations<P> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<P> Default for Confirmations<P> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(State { handed_out: 0, settled: 0, waiting: VecDeque::new(), confirmable: None })))
    }
}

struct State<P> {
    handed_out: u64,
    settled: u64,
    /// Per batch handed out and not settled: the count of records handed out
    /// by its end, the position it makes confirmable, and when it was handed out.
    waiting: VecDeque<(u64, Option<P>, Instant)>,
    /// The newest position with every batch before it settled.
    confirmable: Option<P>,
}

/// What an acker needs of a capture's [`Confirmations`], whatever its positions.
pub trait Settle: Send + Sync {
    /// The next `records` handed out were settled, in read order.
    fn settled(&self, records: usize);
}

impl<P: Clone + Send> Settle for Confirmations<P> {
    fn settled(&self, records: usize) {
        Confirmations::settled(self, records);
    }
}

impl<P: Clone> Confirmations<P> {
    /// A batch of `records` was handed out; `position` (the end of its last
    /// commit) may be confirmed once it is settled. A batch of none is never
    /// settled: its position goes with the batch before it, or is confirmable
    /// now when there is none.
    pub fn handed_out(&self, records: usize, position: Option<P>) {
        let mut state = self.state();
        if records == 0 {
            let Some(position) = position else { return };
            match state.waiting.back_mut() {
                Some((_, last, _)) => *last = Some(position),
                None => state.confirmable = Some(position),
            }
            return;
        }
        state.handed_out += records as u64;
        let end = state.handed_out;
        state.waiting.push_back((end, position, Instant::now()));
    }

    /// The next `records` handed out were settled, in read order.
    pub fn settled(&self, records: usize) {
        let mut state = self.state();
        state.settled += records as u64;
        while let Some((end, ..)) = state.waiting.front()
            && *end <= state.settled
        {
            if let Some((_, Some(position), _)) = state.waiting.pop_front() {
                state.confirmable = Some(position);
            }
        }
    }

    /// The newest position with every batch before it settled.
    pub fn confirmable(&self) -> Option<P> {
        self.state().confirmable.clone()
    }

    /// Whether every record handed out is settled.
    pub fn all_settled(&self) -> bool {
        self.state().waiting.is_empty()
    }

    /// How long the oldest batch not settled has been out (zero for none).
    pub fn oldest_unsettled(&self) -> Duration {
        self.state().waiting.front().map_or(Duration::ZERO, |(.., at)| at.elapsed())
    }

    /// The oldest batch not settled has been out for [`RELEASE_AFTER`].
    pub fn overdue(&self) -> bool {
        self.oldest_unsettled() >= RELEASE_AFTER
    }

    fn state(&self) -> MutexGuard<'_, State<P>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_waits_for_its_batch_and_every_batch_before_it() {
        let confirmations = Confirmations::<u64>::default();
        confirmations.handed_out(3, Some(100));
        confirmations.handed_out(2, None);
        confirmations.handed_out(4, Some(300));
        assert_eq!(confirmations.confirmable(), None);
        confirmations.settled(3);
        assert_eq!(confirmations.confirmable(), Some(100));
        confirmations.settled(2);
        assert_eq!(confirmations.confirmable(), Some(100), "a batch ending inside a transaction confirms nothing new");
        assert!(!confirmations.all_settled());
        confirmations.settled(4);
        assert_eq!(confirmations.confirmable(), Some(300));
        assert!(confirmations.all_settled());
        assert_eq!(confirmations.oldest_unsettled(), Duration::ZERO);
    }

    #[test]
    fn batches_settled_together_confirm_the_last_position() {
        let confirmations = Confirmations::<u64>::default();
        confirmations.handed_out(3, Some(100));
        confirmations.handed_out(2, Some(200));
        confirmations.handed_out(1, Some(250));
        confirmations.settled(5);
        assert_eq!(confirmations.confirmable(), Some(200));
        confirmations.settled(1);
        assert_eq!(confirmations.confirmable(), Some(250));
    }

    #[test]
    fn a_commit_with_nothing_for_us_goes_with_the_batch_before_it() {
        let confirmations = Confirmations::<u64>::default();
        confirmations.handed_out(0, Some(50));
        assert_eq!(confirmations.confirmable(), Some(50), "nothing is waiting: confirmable now");
        confirmations.handed_out(2, Some(100));
        confirmations.handed_out(0, Some(120));
        assert_eq!(confirmations.confirmable(), Some(50));
        confirmations.settled(2);
        assert_eq!(confirmations.confirmable(), Some(120));
    }
}
