//! Slow-request isolation (Pigeon's): a method whose recent calls mostly miss their
//! deadline is moved to a separate small pool of threads, so that it cannot take the
//! threads every other method needs; once its calls meet their deadlines again, it
//! moves back.
//!
//! Per method, the layer counts calls and timeouts over the last one to two windows
//! (a call counts as a timeout when it ended, or was abandoned, after its deadline).
//! With at least `min_calls` calls counted, a timeout share of `ratio` or more
//! isolates the method; a share under half of `ratio` brings it back (the gap keeps
//! it from flapping). Isolated calls run the rest of the chain, their handler
//! included, on the slow pool: a multi-threaded runtime with threads named
//! `rpc-slow-*`. A call dropped by the server (cancelled, or past its deadline) is
//! dropped on the slow pool too.
//!
//! Defaults: `ratio` 0.2, `min_calls` 10, `window` 10 s, 2 threads. It helps most on a
//! server whose handlers block (a business pool, [`ServerBuilder::business_pool`](crate::ServerBuilder::business_pool)):
//! there a slow method would otherwise hold every pool thread.
//!
//! ```
//! use std::time::Duration;
//! use rpc_core::filter::isolation::IsolationLayer;
//! let isolation = IsolationLayer::builder()
//!     .ratio(0.5)
//!     .window(Duration::from_secs(5))
//!     .threads(1)
//!     .build()?;
//! let server = rpc_core::Server::builder().business_pool(8).layer(isolation.clone());
//! // Which methods are isolated now:
//! assert!(isolation.isolated().is_empty());
//! # Ok::<(), rpc_core::RpcError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tower::{Layer, Service};

use super::{BoxError, ServerRequest, ServerResponse};
use crate::error::RpcError;
use crate::protocol::Status;
use crate::runtime::OwnedRuntime;

/// Collects the settings of an [`IsolationLayer`].
#[derive(Debug, Clone)]
pub struct IsolationBuilder {
    ratio: f64,
    min_calls: u32,
    window: Duration,
    threads: usize,
}

impl Default for IsolationBuilder {
    fn default() -> Self {
        IsolationBuilder {
            ratio: 0.2,
            min_calls: 10,
            window: Duration::from_secs(10),
            threads: 2,
        }
    }
}

impl IsolationBuilder {
    /// The share of timeouts (0 to 1, exclusive of 0) that isolates a method.
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Calls a method must have had in the window before it is judged.
    pub fn min_calls(mut self, calls: u32) -> Self {
        self.min_calls = calls;
        self
    }

    /// The window calls are counted over.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Threads of the slow pool.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// The layer, with its slow pool started.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] for a ratio outside (0, 1], zero calls, a zero
    /// window or zero threads; [`RpcError::Internal`] if the pool cannot start.
    pub fn build(self) -> Result<IsolationLayer, RpcError> {
        if !(self.ratio > 0.0 && self.ratio <= 1.0) {
            return Err(RpcError::InvalidConfig(format!(
                "the isolation ratio is {}; it must be above 0 and at most 1",
                self.ratio
            )));
        }
        if self.min_calls == 0 || self.window.is_zero() || self.threads == 0 {
            return Err(RpcError::InvalidConfig(
                "isolation needs a positive call count, window and thread count".to_owned(),
            ));
        }
        let pool = OwnedRuntime::start("rpc-slow", self.threads)
            .map_err(|e| RpcError::Internal(format!("cannot start the slow pool: {e}")))?;
        Ok(IsolationLayer {
            shared: Arc::new(Shared {
                settings: self,
                pool,
                methods: parking_lot::RwLock::default(),
            }),
        })
    }
}

/// What every copy of the layer shares.
#[derive(Debug)]
struct Shared {
    settings: IsolationBuilder,
    pool: OwnedRuntime,
    methods: parking_lot::RwLock<HashMap<(String, String), Arc<MethodWindow>>>,
}

/// The recent calls of one method.
#[derive(Debug)]
struct MethodWindow {
    /// Whether its calls run on the slow pool now.
    isolated: AtomicBool,
    counts: parking_lot::Mutex<Counts>,
}

#[derive(Debug)]
struct Counts {
    /// When the current window began.
    started: Instant,
    calls: u32,
    timeouts: u32,
    /// The window before.
    previous: (u32, u32),
}

impl MethodWindow {
    fn new() -> MethodWindow {
        MethodWindow {
            isolated: AtomicBool::new(false),
            counts: parking_lot::Mutex::new(Counts {
                started: Instant::now(),
                calls: 0,
                timeouts: 0,
                previous: (0, 0),
            }),
        }
    }

    /// Counts a call that ended; may isolate the method or bring it back.
    fn record(&self, timed_out: bool, settings: &IsolationBuilder, name: &str) {
        let mut counts = self.counts.lock();
        let now = Instant::now();
        let age = now.duration_since(counts.started);
        if age >= settings.window {
            counts.previous = if age >= settings.window * 2 {
                (0, 0)
            } else {
                (counts.calls, counts.timeouts)
            };
            counts.calls = 0;
            counts.timeouts = 0;
            counts.started = now;
        }
        counts.calls += 1;
        counts.timeouts += u32::from(timed_out);
        let calls = counts.calls + counts.previous.0;
        if calls < settings.min_calls {
            return;
        }
        let share = f64::from(counts.timeouts + counts.previous.1) / f64::from(calls);
        let isolated = self.isolated.load(Ordering::Relaxed);
        if !isolated && share >= settings.ratio {
            self.isolated.store(true, Ordering::Relaxed);
            tracing::warn!(
                method = name,
                share,
                "method isolated on the slow pool: its calls miss their deadlines"
            );
        } else if isolated && share < settings.ratio / 2.0 {
            self.isolated.store(false, Ordering::Relaxed);
            tracing::info!(method = name, share, "method back from the slow pool");
        }
    }
}

/// Isolates slow methods; see the [module docs](self). Clones share the counts and
/// the slow pool.
#[derive(Debug, Clone)]
pub struct IsolationLayer {
    shared: Arc<Shared>,
}

impl IsolationLayer {
    /// Starts collecting settings.
    pub fn builder() -> IsolationBuilder {
        IsolationBuilder::default()
    }

    /// The methods isolated now, as `service.method`, sorted.
    pub fn isolated(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .shared
            .methods
            .read()
            .iter()
            .filter(|(_, w)| w.isolated.load(Ordering::Relaxed))
            .map(|((s, m), _)| format!("{s}.{m}"))
            .collect();
        names.sort();
        names
    }
}

impl<S> Layer<S> for IsolationLayer {
    type Service = Isolation<S>;

    fn layer(&self, inner: S) -> Isolation<S> {
        Isolation {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`IsolationLayer`] makes.
#[derive(Clone)]
pub struct Isolation<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for Isolation<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Isolation").finish_non_exhaustive()
    }
}

impl<S> Isolation<S> {
    fn window(&self, service: &str, method: &str) -> Arc<MethodWindow> {
        let key = (service.to_owned(), method.to_owned());
        if let Some(w) = self.shared.methods.read().get(&key) {
            return Arc::clone(w);
        }
        Arc::clone(
            self.shared
                .methods
                .write()
                .entry(key)
                .or_insert_with(|| Arc::new(MethodWindow::new())),
        )
    }
}

impl<S> Service<ServerRequest> for Isolation<S>
where
    S: Service<ServerRequest, Response = ServerResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = ServerResponse;
    type Error = BoxError;
    type Future = Isolated<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ServerRequest) -> Self::Future {
        let window = self.window(request.service(), request.method());
        let name = format!("{}.{}", request.service(), request.method());
        let deadline = request.context().deadline;
        let isolated = window.isolated.load(Ordering::Relaxed);
        let future = self.inner.call(request);
        let run = if isolated {
            Run::Slow(Abort(self.shared.pool.handle().spawn(future)))
        } else {
            Run::Here(Box::pin(future))
        };
        Isolated {
            run,
            tally: Some(Tally {
                window,
                deadline,
                shared: Arc::clone(&self.shared),
                name,
            }),
        }
    }
}

/// Aborts a task on the slow pool when the call is dropped.
struct Abort(JoinHandle<Result<ServerResponse, BoxError>>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where an isolated call's chain runs.
enum Run<F> {
    Here(Pin<Box<F>>),
    Slow(Abort),
}

/// Counts the call when it ends or is dropped.
struct Tally {
    window: Arc<MethodWindow>,
    deadline: Option<Instant>,
    shared: Arc<Shared>,
    name: String,
}

impl Tally {
    fn finish(self, timed_out: bool) {
        let late = self.deadline.is_some_and(|d| Instant::now() >= d);
        self.window
            .record(timed_out || late, &self.shared.settings, &self.name);
    }
}

/// The future of a call through [`Isolation`].
pub struct Isolated<F> {
    run: Run<F>,
    tally: Option<Tally>,
}

impl<F> fmt::Debug for Isolated<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Isolated").finish_non_exhaustive()
    }
}

impl<F> Drop for Isolated<F> {
    fn drop(&mut self) {
        // Dropped before it ended: cancelled, or abandoned at its deadline.
        if let Some(tally) = self.tally.take() {
            tally.finish(false);
        }
    }
}

impl<F> Future for Isolated<F>
where
    F: Future<Output = Result<ServerResponse, BoxError>>,
{
    type Output = Result<ServerResponse, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let output = match &mut this.run {
            Run::Here(future) => std::task::ready!(future.as_mut().poll(cx)),
            Run::Slow(task) => match std::task::ready!(Pin::new(&mut task.0).poll(cx)) {
                Ok(output) => output,
                Err(e) => Err(if e.is_panic() {
                    "the handler panicked on the slow pool".into()
                } else {
                    "the call was stopped on the slow pool".into()
                }),
            },
        };
        if let Some(tally) = this.tally.take() {
            let timed_out = matches!(&output, Ok(r) if r.status() == Status::Timeout);
            tally.finish(timed_out);
        }
        Poll::Ready(output)
    }
}
