//! The calls a connection is waiting on: a slab indexed by request id, each slot
//! holding the waiting caller's waker and then its outcome, and the calls' deadlines in
//! order.
//!
//! An id is a slab index plus a generation (`generation << 32 | index`), so finding a
//! call is an array access, and a late response to a call that timed out can never
//! match the call that reused its slot. The outcome is left in the slot for the caller
//! to take when it is next polled: no channel, no allocation per call.

use std::collections::VecDeque;
use std::task::{Poll, Waker};
use std::time::Duration;

use rpc_lb::{Picked, Timestamp};
use tokio::time::Instant;

use crate::error::RpcError;
use crate::protocol::Frame;

/// How a call ended: its response frame (`None` for a oneway request, once written), or
/// why there is none.
pub(crate) type Outcome = Result<Option<Frame>, RpcError>;

/// When a call's outcome came, and since when it had been waiting for it: both read
/// by the connection task, one clock reading (and one conversion to the balancer's
/// [`Timestamp`]) per batch of calls, so that a caller who wants its call's latency (a
/// balancer's latency estimate, the time a failover has left) reads no clock of its
/// own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// When the connection took the call up and its timeout started (see
    /// [`Calls::schedule`]); `None` if it never did.
    pub(crate) sent: Option<Timestamp>,
    /// When the outcome arrived: the read that brought the response, the write that
    /// sent a oneway request, the deadline that passed, the end of the connection.
    pub(crate) at: Timestamp,
}

impl Timing {
    /// Records a call that succeeded on `picked`, timed by `timing`. A call answered
    /// was taken up by its connection, so its timing is complete; one without (which
    /// cannot happen) is not recorded.
    #[inline]
    pub(crate) fn record_success(timing: Option<Timing>, picked: &Picked) {
        if let Some(Timing {
            sent: Some(sent),
            at,
        }) = timing
        {
            picked.record_success_between(sent, at);
        }
    }

    /// How long the clock of a call timed by `timing` has run by now: zero if its
    /// connection never took it up (its timeout had not started) or no longer knows it.
    #[cold]
    pub(crate) fn spent(timing: Option<Timing>) -> Duration {
        timing
            .and_then(|timing| timing.sent)
            .map_or(Duration::ZERO, |sent| Timestamp::now().since(sent))
    }
}

/// What a call's slot holds.
#[derive(Debug)]
enum State {
    /// The call waits for its response.
    Waiting {
        /// Wakes the caller; `None` until the caller is first polled.
        waker: Option<Waker>,
        /// The call's timeout, for the error when it passes.
        timeout: Duration,
        /// When its timeout started; `None` until [`Calls::schedule`].
        sent: Option<Timestamp>,
    },
    /// The outcome, until the caller takes it: the response frame, or `None` for a
    /// oneway request that has been written; and when it came.
    Done(Outcome, Timing),
}

/// One slab slot.
#[derive(Debug, Default)]
struct Entry {
    /// Bumped on every insert, so stale ids miss.
    generation: u32,
    /// The call occupying the slot.
    state: Option<State>,
}

/// Pending calls of one connection.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    /// Slots by index.
    entries: Vec<Entry>,
    /// Indices of empty slots.
    free: Vec<u32>,
    /// Calls still waiting (slots whose outcome has not arrived).
    waiting: usize,
    /// `(deadline, id)`, earliest first; entries of answered calls are dropped when they
    /// reach the front. Calls usually share one timeout, so deadlines arrive in order
    /// and insertion is a push at the back.
    deadlines: VecDeque<(Instant, u64)>,
}

impl Calls {
    /// Registers a waiting call and returns its request id. Its deadline is set later,
    /// with [`schedule`](Calls::schedule).
    pub(crate) fn insert(&mut self, timeout: Duration, waker: Option<Waker>) -> u64 {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.entries.push(Entry::default());
                u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 calls in flight")
            }
        };
        let entry = &mut self.entries[index as usize];
        entry.generation = entry.generation.wrapping_add(1);
        entry.state = Some(State::Waiting {
            waker,
            timeout,
            sent: None,
        });
        self.waiting += 1;
        u64::from(entry.generation) << 32 | u64::from(index)
    }

    /// Sets the deadline of call `id` to `start` (`stamp` on the balancer's clock) plus
    /// its timeout, if it still waits.
    pub(crate) fn schedule(&mut self, id: u64, start: Instant, stamp: Timestamp) {
        let Some(Entry {
            state: Some(State::Waiting { timeout, sent, .. }),
            ..
        }) = self.entry_mut(id)
        else {
            return;
        };
        *sent = Some(stamp);
        let deadline = start + *timeout;
        // Answered calls leave the queue only from its front, so behind one slow call
        // they pile up (a second's worth at a million calls a second). Sweep them out
        // whenever they outnumber the waiting calls: amortized O(1) per call.
        if self.deadlines.len() >= 2 * self.waiting + 1024 {
            let entries = &self.entries;
            self.deadlines.retain(|&(_, id)| waiting_in(entries, id));
        }
        match self.deadlines.back() {
            Some(&(last, _)) if last > deadline => {
                let at = self.deadlines.partition_point(|&(d, _)| d <= deadline);
                self.deadlines.insert(at, (deadline, id));
            }
            _ => self.deadlines.push_back((deadline, id)),
        }
    }

    /// Gives call `id` its outcome, come `at`, if it still waits, and returns the waker
    /// to wake (wake it after releasing the lock around these calls).
    #[inline]
    #[must_use = "the caller must be woken"]
    pub(crate) fn complete(&mut self, id: u64, outcome: Outcome, at: Timestamp) -> Option<Waker> {
        let entry = self.entry_mut(id)?;
        let Some(State::Waiting { waker, sent, .. }) = &mut entry.state else {
            return None;
        };
        let waker = waker.take();
        let timing = Timing { sent: *sent, at };
        entry.state = Some(State::Done(outcome, timing));
        self.waiting -= 1;
        waker
    }

    /// The caller's side: takes the outcome of call `id` and when it came, if it has
    /// arrived (freeing the slot), or records `waker` to be woken when it does.
    /// `Ready(None)` when there is no such call (its slot was released: the connection
    /// forgot it).
    #[inline]
    pub(crate) fn poll(&mut self, id: u64, waker: &Waker) -> Poll<Option<(Outcome, Timing)>> {
        let Some(entry) = self.entry_mut(id) else {
            return Poll::Ready(None);
        };
        match &mut entry.state {
            Some(State::Waiting {
                waker: Some(stored),
                ..
            }) if stored.will_wake(waker) => Poll::Pending,
            Some(State::Waiting { waker: stored, .. }) => {
                *stored = Some(waker.clone());
                Poll::Pending
            }
            Some(State::Done(..)) => {
                let Some(State::Done(outcome, timing)) = entry.state.take() else {
                    unreachable!("matched Done just above");
                };
                self.release(id);
                Poll::Ready(Some((outcome, timing)))
            }
            None => Poll::Ready(None),
        }
    }

    /// The caller gave up on call `id` (dropped it): frees its slot whatever its state.
    /// A response that arrives later misses, because the slot's generation moves on.
    /// Returns whether the call was still waiting for its outcome.
    pub(crate) fn cancel(&mut self, id: u64) -> bool {
        let Some(entry) = self.entry_mut(id) else {
            return false;
        };
        let was_waiting = match entry.state.take() {
            Some(State::Waiting { .. }) => {
                self.waiting -= 1;
                true
            }
            Some(State::Done(..)) => false,
            None => return false,
        };
        self.release(id);
        was_waiting
    }

    /// Calls still waiting for their outcome.
    pub(crate) fn len(&self) -> usize {
        self.waiting
    }

    /// Whether no call is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    /// Fails every call whose deadline is not after `now` with a timeout; their wakers
    /// are pushed onto `wake`.
    pub(crate) fn expire(&mut self, now: Instant, wake: &mut Vec<Waker>) {
        // Converted only if some call's time is up.
        let mut stamp = None;
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let timeout = match self.entry_mut(id) {
                Some(Entry {
                    state: Some(State::Waiting { timeout, .. }),
                    ..
                }) => *timeout,
                _ => continue,
            };
            let at = *stamp.get_or_insert_with(|| Timestamp::of(now.into_std()));
            wake.extend(self.complete(id, Err(RpcError::Timeout(timeout)), at));
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

    /// Gives every waiting call the outcome `outcome(id)`, come `at`; wakers are pushed
    /// onto `wake`. Used when the connection ends.
    pub(crate) fn fail_all(
        &mut self,
        mut outcome: impl FnMut(u64) -> RpcError,
        at: Timestamp,
        wake: &mut Vec<Waker>,
    ) {
        self.deadlines.clear();
        for (index, entry) in self.entries.iter_mut().enumerate() {
            if let Some(State::Waiting { waker, sent, .. }) = &mut entry.state {
                let id = u64::from(entry.generation) << 32 | index as u64;
                wake.extend(waker.take());
                let timing = Timing { sent: *sent, at };
                entry.state = Some(State::Done(Err(outcome(id)), timing));
            }
        }
        self.waiting = 0;
    }

    /// The slot of `id`, if the id is current.
    fn entry_mut(&mut self, id: u64) -> Option<&mut Entry> {
        let index = (id & u64::from(u32::MAX)) as usize;
        self.entries
            .get_mut(index)
            .filter(|e| e.generation == (id >> 32) as u32)
    }

    /// Returns the (already emptied) slot of `id` to the free list.
    fn release(&mut self, id: u64) {
        self.free.push((id & u64::from(u32::MAX)) as u32);
    }

    fn is_waiting(&self, id: u64) -> bool {
        waiting_in(&self.entries, id)
    }
}

/// Whether call `id` is in `entries` and still waits.
fn waiting_in(entries: &[Entry], id: u64) -> bool {
    let index = (id & u64::from(u32::MAX)) as usize;
    entries.get(index).is_some_and(|e| {
        e.generation == (id >> 32) as u32 && matches!(e.state, Some(State::Waiting { .. }))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use bytes::Bytes;

    use super::*;
    use crate::protocol::Flags;

    /// A waker counting its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter::default());
        (Arc::clone(&counter), Waker::from(counter))
    }

    fn frame(id: u64) -> Frame {
        Frame::new(
            Flags::RESPONSE,
            0,
            id,
            Bytes::new(),
            Bytes::from_static(b"\x01"),
        )
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn outcome_waits_in_the_slot_until_the_caller_takes_it() {
        let mut calls = Calls::default();
        let (count, w) = waker();
        let id = calls.insert(SECOND, Some(w.clone()));
        assert!(calls.poll(id, &w).is_pending());
        let woken = calls
            .complete(id, Ok(Some(frame(id))), Timestamp::now())
            .expect("a waker to wake");
        woken.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(calls.is_empty(), "no call waits once its outcome is in");
        match calls.poll(id, &w) {
            Poll::Ready(Some((Ok(Some(f)), _))) => assert_eq!(f.header.request_id, id),
            other => panic!("expected the frame, got {other:?}"),
        }
        assert!(
            matches!(calls.poll(id, &w), Poll::Ready(None)),
            "taken once"
        );
    }

    #[test]
    fn ids_are_unique_and_stale_ids_miss() {
        let mut calls = Calls::default();
        let (_, w) = waker();
        let id_a = calls.insert(SECOND, None);
        calls.cancel(id_a);
        let id_b = calls.insert(SECOND, None);
        assert_ne!(id_a, id_b, "a reused slot gets a new generation");
        assert!(
            calls
                .complete(id_a, Ok(Some(frame(id_a))), Timestamp::now())
                .is_none(),
            "a late reply to the old call misses"
        );
        assert!(
            calls.poll(id_b, &w).is_pending(),
            "and leaves the new call waiting"
        );
        assert_eq!(calls.len(), 1);
        calls.cancel(id_b);
        assert!(calls.is_empty());
        assert_eq!(calls.free.len(), 1, "both calls used the one slot");
    }

    #[test]
    fn expiry_follows_deadlines_even_out_of_order() {
        let mut calls = Calls::default();
        let now = Instant::now();
        let (_, w) = waker();
        let late = calls.insert(Duration::from_secs(10), None);
        let early = calls.insert(SECOND, None);
        calls.schedule(late, now, Timestamp::of(now.into_std()));
        calls.schedule(early, now, Timestamp::of(now.into_std()));
        assert_eq!(calls.next_deadline(), Some(now + SECOND));
        let mut wake = Vec::new();
        calls.expire(now + Duration::from_secs(2), &mut wake);
        assert!(matches!(
            calls.poll(early, &w),
            Poll::Ready(Some((Err(RpcError::Timeout(t)), _))) if t == SECOND
        ));
        assert!(calls.poll(late, &w).is_pending(), "not yet");
        assert_eq!(calls.next_deadline(), Some(now + Duration::from_secs(10)));
    }

    #[test]
    fn answered_and_cancelled_calls_leave_the_deadline_queue() {
        let mut calls = Calls::default();
        let now = Instant::now();
        let answered = calls.insert(SECOND, None);
        let cancelled = calls.insert(SECOND, None);
        calls.schedule(answered, now, Timestamp::of(now.into_std()));
        calls.schedule(cancelled, now, Timestamp::of(now.into_std()));
        let _ = calls.complete(answered, Ok(Some(frame(answered))), Timestamp::now());
        calls.cancel(cancelled);
        assert_eq!(calls.next_deadline(), None);
        assert!(calls.deadlines.is_empty());
    }

    #[test]
    fn answered_calls_behind_a_slow_one_do_not_pile_up_in_the_deadline_queue() {
        let mut calls = Calls::default();
        let now = Instant::now();
        // A call that is taking its time, at the front of the queue...
        let slow = calls.insert(SECOND, None);
        calls.schedule(slow, now, Timestamp::of(now.into_std()));
        // ...and many answered calls behind it, as the connection task sees them.
        let (_, w) = waker();
        for i in 0..100_000 {
            let fast = calls.insert(SECOND, None);
            calls.schedule(
                fast,
                now + Duration::from_micros(i),
                Timestamp::of((now + Duration::from_micros(i)).into_std()),
            );
            let _ = calls.complete(fast, Ok(None), Timestamp::now());
            assert!(calls.poll(fast, &w).is_ready());
            assert_eq!(calls.next_deadline(), Some(now + SECOND));
        }
        assert!(
            calls.deadlines.len() <= 2 * calls.len() + 1024,
            "{} entries for {} waiting calls",
            calls.deadlines.len(),
            calls.len()
        );
    }

    #[test]
    fn fail_all_wakes_every_waiting_caller_and_keeps_their_outcomes() {
        let mut calls = Calls::default();
        let (count, w) = waker();
        let a = calls.insert(SECOND, Some(w.clone()));
        let b = calls.insert(SECOND, Some(w.clone()));
        let _ = calls.complete(b, Ok(Some(frame(b))), Timestamp::now());
        let mut wake = Vec::new();
        calls.fail_all(
            |_| RpcError::ConnectionLost {
                reason: "gone".into(),
                source: None,
            },
            Timestamp::now(),
            &mut wake,
        );
        assert_eq!(wake.len(), 1, "only the call still waiting");
        wake.into_iter().for_each(Waker::wake);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            calls.poll(a, &w),
            Poll::Ready(Some((Err(RpcError::ConnectionLost { .. }), _)))
        ));
        assert!(
            matches!(calls.poll(b, &w), Poll::Ready(Some((Ok(Some(_)), _)))),
            "an outcome already in stays"
        );
    }

    #[test]
    fn an_outcome_comes_with_when_its_call_was_sent_and_answered() {
        let mut calls = Calls::default();
        let (_, w) = waker();
        let start = Instant::now();
        let sent = Timestamp::of(start.into_std());
        let answered = Timestamp::of((start + Duration::from_millis(3)).into_std());
        let id = calls.insert(SECOND, None);
        calls.schedule(id, start, sent);
        let _ = calls.complete(id, Ok(Some(frame(id))), answered);
        match calls.poll(id, &w) {
            Poll::Ready(Some((Ok(Some(_)), timing))) => {
                assert_eq!(timing.sent, Some(sent));
                assert_eq!(timing.at.since(sent), Duration::from_millis(3));
            }
            other => panic!("expected the frame, got {other:?}"),
        }
        // A call failed before the connection took it up: its clock never ran.
        let unsent = calls.insert(SECOND, None);
        let _ = calls.complete(unsent, Ok(None), answered);
        match calls.poll(unsent, &w) {
            Poll::Ready(Some((_, timing))) => {
                assert_eq!(timing.sent, None);
                assert_eq!(timing.at, answered);
            }
            other => panic!("expected the outcome, got {other:?}"),
        }
    }
}
