//! Running handlers: on the connection's worker as futures polled with the
//! connection, or on the business pool as tasks of their own; either way guarded
//! against panics and bounded by the caller's deadline.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

use super::context::{enter as enter_context, CancelSignal};
use super::{CallContext, Dispatched, Reply};
use crate::protocol::Status;

/// A call whose handler is running on this worker.
pub(super) struct InFlight {
    /// Request id to answer.
    pub(super) id: u64,
    /// No response is written for oneway calls.
    pub(super) oneway: bool,
    /// The running call; taken out when it finishes.
    pub(super) call: Option<Dispatched>,
    /// Made current while the handler is polled (see [`CallContext`]).
    pub(super) context: Option<CallContext>,
    /// The caller's deadline, armed once the handler did not finish at once.
    pub(super) deadline: Option<Pin<Box<Sleep>>>,
    /// The caller's timeout, reported when the deadline passes.
    pub(super) timeout: Option<Duration>,
    /// Set when the caller cancels the call.
    pub(super) cancel: Arc<CancelSignal>,
}

/// How a call ended.
pub(super) enum Outcome {
    /// The handler finished; its result is still to be encoded.
    Finished(Dispatched),
    /// It failed (panic, deadline); this is the reply.
    Failed(Reply),
    /// The caller cancelled it; the handler was dropped and nothing is sent.
    Cancelled,
}

impl Future for InFlight {
    type Output = (u64, bool, Outcome);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(call) = this.call.as_mut() else {
            return Poll::Pending;
        };
        if this.cancel.poll_cancelled(cx.waker()) {
            this.call = None;
            return Poll::Ready((this.id, this.oneway, Outcome::Cancelled));
        }
        let outcome = match poll_guarded(call, &mut this.context, cx) {
            Ok(Poll::Ready(())) => match this.call.take() {
                Some(call) => Outcome::Finished(call),
                None => return Poll::Pending,
            },
            Ok(Poll::Pending) => {
                let passed = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if !passed {
                    return Poll::Pending;
                }
                this.call = None;
                Outcome::Failed(deadline_passed(this.timeout))
            }
            Err(reply) => {
                this.call = None;
                Outcome::Failed(reply)
            }
        };
        Poll::Ready((this.id, this.oneway, outcome))
    }
}

/// A call handed to the business pool.
pub(super) struct PoolCall {
    /// The call, not started yet.
    pub(super) call: Dispatched,
    /// Made current while the handler is polled.
    pub(super) context: Option<CallContext>,
    /// The caller's timeout, counted from `received`.
    pub(super) timeout: Option<Duration>,
    /// When the request was read.
    pub(super) received: Instant,
    /// No response is sent for oneway calls.
    pub(super) oneway: bool,
    /// Set when the caller cancels the call; `None` for oneway calls.
    pub(super) cancel: Option<Arc<CancelSignal>>,
}

/// Runs a call on the business pool to its end and returns the reply to send:
/// `None` for a oneway or cancelled call (nothing is sent). A call whose deadline
/// passed while it waited for a pool thread is never started.
pub(super) async fn run_on_pool(job: PoolCall) -> Option<Reply> {
    let PoolCall {
        mut call,
        mut context,
        timeout,
        received,
        oneway,
        cancel,
    } = job;
    let deadline = timeout.map(|t| received + t);
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return (!oneway).then(|| not_started(timeout));
    }
    let run = std::future::poll_fn(|cx| {
        if cancel
            .as_ref()
            .is_some_and(|c| c.poll_cancelled(cx.waker()))
        {
            return Poll::Ready(Some(None));
        }
        match poll_guarded(&mut call, &mut context, cx) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(None),
            Err(reply) => Poll::Ready(Some(Some(reply))),
        }
    });
    let failed = match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), run)
            .await
            .unwrap_or_else(|_| Some(Some(deadline_passed(timeout)))),
        None => run.await,
    };
    match failed {
        _ if oneway => None,
        // Cancelled: the caller is gone.
        Some(None) => None,
        Some(Some(reply)) => Some(reply),
        None => Some(
            std::panic::catch_unwind(AssertUnwindSafe(|| Reply::finished(call)))
                .unwrap_or_else(|panic| panicked(&*panic)),
        ),
    }
}

/// Polls a handler, turning a panic into an internal-error reply.
pub(super) fn poll_guarded(
    call: &mut Dispatched,
    context: &mut Option<CallContext>,
    cx: &mut Context<'_>,
) -> Result<Poll<()>, Reply> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        enter_context(context, || call.as_mut().poll_done(cx))
    }))
    .map_err(|panic| panicked(&*panic))
}

/// The reply of a call whose deadline passed before its handler could start (it waited
/// in the read batch or for a pool thread).
pub(super) fn not_started(timeout: Option<Duration>) -> Reply {
    let ms = timeout.map_or(0, |t| t.as_millis());
    Reply::error(
        Status::Timeout,
        &format!("the caller's deadline of {ms} ms passed before the handler started"),
    )
}

/// The reply of a call whose deadline passed while its handler ran.
fn deadline_passed(timeout: Option<Duration>) -> Reply {
    let ms = timeout.map_or(0, |t| t.as_millis());
    Reply::error(
        Status::Timeout,
        &format!("the caller's deadline of {ms} ms passed before the handler finished"),
    )
}

/// The reply of a handler that panicked, logged.
pub(super) fn panicked(panic: &(dyn std::any::Any + Send)) -> Reply {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    tracing::error!(%message, "handler panicked");
    Reply::error(
        Status::InternalError,
        &format!("handler panicked: {message}"),
    )
}
