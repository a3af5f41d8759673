//! A capture confirms one position in the database's log, and reading ahead
//! hands out several batches before the first is settled: a batch's position
//! becomes confirmable only once it and every batch before it are settled.
//! Batches settle in read order, so counting settled records tells which.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// Shared by a capture, which hands batches out, and its acker, which settles
/// them; cheap to clone.
#[derive(Clone, Default)]
pub struct Confirmations(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    handed_out: u64,
    settled: u64,
    /// Per batch handed out and not settled: the count of records handed out
    /// by its end, and the position it makes confirmable.
    waiting: VecDeque<(u64, Option<u64>)>,
    /// The newest position with every batch before it settled.
    confirmable: u64,
}

impl Confirmations {
    /// A batch of `records` was handed out; `position` (the end of its last
    /// commit) may be confirmed once it is settled. A batch of none is never
    /// settled: its position goes with the batch before it, or is confirmable
    /// now when there is none.
    pub fn handed_out(&self, records: usize, position: Option<u64>) {
        let mut state = self.state();
        if records == 0 {
            match state.waiting.back_mut() {
                Some((_, last)) => *last = (*last).max(position),
                None => state.confirmable = state.confirmable.max(position.unwrap_or(0)),
            }
            return;
        }
        state.handed_out += records as u64;
        let end = state.handed_out;
        state.waiting.push_back((end, position));
    }

    /// The next `records` handed out were settled, in read order.
    pub fn settled(&self, records: usize) {
        let mut state = self.state();
        state.settled += records as u64;
        while let Some(&(end, position)) = state.waiting.front()
            && end <= state.settled
        {
            state.waiting.pop_front();
            state.confirmable = state.confirmable.max(position.unwrap_or(0));
        }
    }

    /// The newest position with every batch before it settled (0 for none).
    pub fn confirmable(&self) -> u64 {
        self.state().confirmable
    }

    /// Whether every record handed out is settled.
    pub fn all_settled(&self) -> bool {
        self.state().waiting.is_empty()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_waits_for_its_batch_and_every_batch_before_it() {
        let confirmations = Confirmations::default();
        confirmations.handed_out(3, Some(100));
        confirmations.handed_out(2, None);
        confirmations.handed_out(4, Some(300));
        assert_eq!(confirmations.confirmable(), 0);
        confirmations.settled(3);
        assert_eq!(confirmations.confirmable(), 100);
        confirmations.settled(2);
        assert_eq!(confirmations.confirmable(), 100, "a batch ending inside a transaction confirms nothing new");
        assert!(!confirmations.all_settled());
        confirmations.settled(4);
        assert_eq!(confirmations.confirmable(), 300);
        assert!(confirmations.all_settled());
    }

    #[test]
    fn batches_settled_together_confirm_the_last_position() {
        let confirmations = Confirmations::default();
        confirmations.handed_out(3, Some(100));
        confirmations.handed_out(2, Some(200));
        confirmations.handed_out(1, Some(250));
        confirmations.settled(5);
        assert_eq!(confirmations.confirmable(), 200);
        confirmations.settled(1);
        assert_eq!(confirmations.confirmable(), 250);
    }

    #[test]
    fn a_commit_with_nothing_for_us_goes_with_the_batch_before_it() {
        let confirmations = Confirmations::default();
        confirmations.handed_out(0, Some(50));
        assert_eq!(confirmations.confirmable(), 50, "nothing is waiting: confirmable now");
        confirmations.handed_out(2, Some(100));
        confirmations.handed_out(0, Some(120));
        assert_eq!(confirmations.confirmable(), 50);
        confirmations.settled(2);
        assert_eq!(confirmations.confirmable(), 120);
    }
}
