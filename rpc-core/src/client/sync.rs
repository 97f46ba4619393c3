//! Sync mode's executor: runs a call's future on the calling thread, parking it
//! between wake-ups, with a time limit of its own.
//!
//! The limit is a backstop. A call's deadline is normally enforced by its connection
//! task; should that task be gone (its runtime shut down, say), a blocked thread must
//! still come back when the call's timeout passes rather than wait forever.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// Wakes the blocked thread.
struct Unpark {
    /// The thread blocked in [`block_on`].
    thread: Thread,
    /// Set by a wake-up, so a spurious unpark (or one meant for other code on this
    /// thread) is not taken for one.
    woken: AtomicBool,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// Polls `fut` on this thread until it completes (`Some(output)`) or `limit` passes
/// (`None`; the future is dropped, which gives the call up).
pub(crate) fn block_on<F: Future>(fut: F, limit: Duration) -> Option<F::Output> {
    // A limit too large to add to the clock means no limit.
    let deadline = Instant::now().checked_add(limit);
    let unpark = Arc::new(Unpark {
        thread: thread::current(),
        woken: AtomicBool::new(false),
    });
    let waker = Waker::from(Arc::clone(&unpark));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(output) = fut.as_mut().poll(&mut cx) {
            return Some(output);
        }
        while !unpark.woken.swap(false, Ordering::Acquire) {
            match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    thread::park_timeout(deadline - now);
                }
                None => thread::park(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_output_of_a_future_woken_from_another_thread() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.send(7).unwrap();
        });
        assert_eq!(block_on(rx, Duration::from_secs(5)), Some(Ok(7)));
        sender.join().unwrap();
    }

    #[test]
    fn gives_up_on_a_future_never_woken_when_the_limit_passes() {
        let started = Instant::now();
        let out = block_on(std::future::pending::<()>(), Duration::from_millis(50));
        assert_eq!(out, None);
        let spent = started.elapsed();
        assert!(spent >= Duration::from_millis(50), "{spent:?}");
        assert!(spent < Duration::from_secs(5), "{spent:?}");
    }
}
