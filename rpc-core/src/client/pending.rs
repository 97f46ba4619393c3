//! The calls a connection is waiting on: a slab indexed by request id, and their
//! deadlines in order.
//!
//! The connection task assigns request ids itself: an id is a slab index plus a
//! generation (`generation << 32 | index`), so finding a call is an array access, and a
//! late response to a call that timed out can never match the call that reused its slot.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::RpcError;
use crate::protocol::Frame;

/// Where a call's response goes.
pub(crate) type ReplySlot = oneshot::Sender<Result<Frame, RpcError>>;

/// A call waiting for its response.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Where the response goes.
    pub(crate) slot: ReplySlot,
    /// The call's timeout, for the error when it passes.
    pub(crate) timeout: Duration,
}

/// One slab slot.
#[derive(Debug, Default)]
struct Entry {
    /// Bumped on every insert, so stale ids miss.
    generation: u32,
    /// The call occupying the slot.
    call: Option<Pending>,
}

/// Pending calls of one connection.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    /// Slots by index.
    entries: Vec<Entry>,
    /// Indices of empty slots.
    free: Vec<u32>,
    /// Calls waiting.
    len: usize,
    /// `(deadline, id)`, earliest first; entries of answered calls are dropped when they
    /// reach the front. Calls usually share one timeout, so deadlines arrive in order
    /// and insertion is a push at the back.
    deadlines: VecDeque<(Instant, u64)>,
}

impl Calls {
    /// Registers a call and returns its request id.
    pub(crate) fn insert(&mut self, call: Pending, deadline: Instant) -> u64 {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.entries.push(Entry::default());
                u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 calls in flight")
            }
        };
        let entry = &mut self.entries[index as usize];
        entry.generation = entry.generation.wrapping_add(1);
        entry.call = Some(call);
        self.len += 1;
        let id = u64::from(entry.generation) << 32 | u64::from(index);
        match self.deadlines.back() {
            Some(&(last, _)) if last > deadline => {
                let at = self.deadlines.partition_point(|&(d, _)| d <= deadline);
                self.deadlines.insert(at, (deadline, id));
            }
            _ => self.deadlines.push_back((deadline, id)),
        }
        id
    }

    /// Takes the call with this id out, if it is still waiting.
    pub(crate) fn remove(&mut self, id: u64) -> Option<Pending> {
        let index = (id & u64::from(u32::MAX)) as usize;
        let generation = (id >> 32) as u32;
        let entry = self.entries.get_mut(index)?;
        if entry.generation != generation {
            return None;
        }
        let call = entry.call.take()?;
        self.free.push(index as u32);
        self.len -= 1;
        Some(call)
    }

    /// Calls waiting.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no call is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fails every call whose deadline is not after `now` with a timeout.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(call) = self.remove(id) {
                let _ = call.slot.send(Err(RpcError::Timeout(call.timeout)));
            }
        }
    }

    /// The earliest deadline of a call still waiting.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if self.is_waiting(id) {
                return Some(deadline);
            }
            self.deadlines.pop_front();
        }
        None
    }

    /// Forgets calls whose callers gave up (dropped the call future).
    pub(crate) fn forget_abandoned(&mut self) {
        for index in 0..self.entries.len() {
            let entry = &mut self.entries[index];
            if entry.call.as_ref().is_some_and(|c| c.slot.is_closed()) {
                entry.call = None;
                self.free.push(index as u32);
                self.len -= 1;
            }
        }
    }

    /// Takes every waiting call out.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Pending> + '_ {
        self.len = 0;
        self.deadlines.clear();
        self.free.clear();
        self.entries.drain(..).filter_map(|entry| entry.call)
    }

    fn is_waiting(&self, id: u64) -> bool {
        let index = (id & u64::from(u32::MAX)) as usize;
        self.entries
            .get(index)
            .is_some_and(|e| e.generation == (id >> 32) as u32 && e.call.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> (Pending, oneshot::Receiver<Result<Frame, RpcError>>) {
        let (slot, rx) = oneshot::channel();
        (
            Pending {
                slot,
                timeout: Duration::from_secs(1),
            },
            rx,
        )
    }

    #[test]
    fn ids_are_unique_and_stale_ids_miss() {
        let mut calls = Calls::default();
        let now = Instant::now();
        let (a, _ra) = call();
        let id_a = calls.insert(a, now);
        assert!(calls.remove(id_a).is_some());
        let (b, _rb) = call();
        let id_b = calls.insert(b, now);
        assert_ne!(id_a, id_b, "a reused slot gets a new generation");
        assert!(
            calls.remove(id_a).is_none(),
            "a late reply to the old call misses"
        );
        assert_eq!(calls.len(), 1);
        assert!(calls.remove(id_b).is_some());
        assert!(calls.is_empty());
    }

    #[test]
    fn expiry_follows_deadlines_even_out_of_order() {
        let mut calls = Calls::default();
        let now = Instant::now();
        let (late, mut r_late) = call();
        let (early, mut r_early) = call();
        calls.insert(late, now + Duration::from_secs(10));
        calls.insert(early, now + Duration::from_secs(1));
        assert_eq!(calls.next_deadline(), Some(now + Duration::from_secs(1)));
        calls.expire(now + Duration::from_secs(2));
        assert!(matches!(r_early.try_recv(), Ok(Err(RpcError::Timeout(_)))));
        assert!(r_late.try_recv().is_err(), "not yet");
        assert_eq!(calls.next_deadline(), Some(now + Duration::from_secs(10)));
    }
}
