//! Where a call goes: one server, or the provider a balancer picks per call; and the
//! failover rule, in one place, for calls that certainly did not run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use rpc_lb::{PickContext, Picked, Provider};

use super::Balancer;

use super::connection::Connection;
use super::pool::Endpoint;
use super::Client;
use crate::error::RpcError;
use crate::protocol::Frame;

/// Where a client sends its calls.
pub(super) enum Route {
    /// One server address.
    Single(Endpoint),
    /// Several providers of one service, chosen per call by a balancer.
    Cluster(Cluster),
}

/// Providers of a service and the balancer that picks among them.
pub(super) struct Cluster {
    /// Picks a provider per call; holds health, weights and in-flight counts, and
    /// carries each provider's connections, handed out with the pick (no lookup of
    /// the provider's connections per call).
    pub(super) balancer: Balancer,
    /// Serializes updates, so that two concurrent ones cannot lose each other's
    /// connections.
    updating: parking_lot::Mutex<()>,
}

impl Cluster {
    /// No providers yet, balanced by `balancer`.
    pub(super) fn new(balancer: Balancer) -> Cluster {
        Cluster {
            balancer,
            updating: parking_lot::Mutex::new(()),
        }
    }
}

impl Client {
    /// Replaces the provider set of a client made with
    /// [`ClientBuilder::connect_providers`](crate::ClientBuilder::connect_providers): providers join, leave or change weight
    /// while calls run; unchanged providers keep their connections and balancer state.
    /// Does nothing on a single-server client.
    pub fn update_providers(&self, providers: impl IntoIterator<Item = Provider>) {
        let Route::Cluster(cluster) = &self.inner.route else {
            return;
        };
        let _updating = cluster.updating.lock();
        // Providers that stay keep their connections.
        let current: HashMap<SocketAddr, Arc<Endpoint>> =
            cluster.balancer.carried_all().into_iter().collect();
        let carrying = providers.into_iter().map(|provider| {
            let endpoint = current
                .get(&provider.addr)
                .cloned()
                .unwrap_or_else(|| Arc::new(Endpoint::new(provider.addr, &self.inner.config)));
            (provider, endpoint)
        });
        cluster.balancer.update_carrying(carrying);
    }

    /// Where a call can be queued right now with nothing to wait for: the fast path
    /// of a call. For a cluster, a provider is picked (with `hash_key` for `ip-hash`)
    /// and must have an open connection that takes calls. `None` when the call must
    /// connect first, or the provider picked cannot take it now; then the general path
    /// ([`Client::call_frame`]) decides, starting with the provider picked, returned
    /// as the error.
    pub(crate) fn ready_connection(&self, hash_key: Option<u64>) -> Result<Ready, Option<Picked>> {
        match &self.inner.route {
            Route::Single(endpoint) => Ok(Ready {
                conn: endpoint.ready().ok_or(None)?,
                picked: None,
            }),
            Route::Cluster(cluster) => {
                let mut ctx = PickContext::new();
                if let Some(key) = hash_key {
                    ctx = ctx.hash_key(key);
                }
                let (picked, conn) = cluster
                    .balancer
                    .pick_with(&ctx, |endpoint| endpoint.ready())
                    .map_err(|_| None)?;
                match conn {
                    Some(conn) => Ok(Ready {
                        conn,
                        picked: Some(picked),
                    }),
                    None => Err(Some(picked)),
                }
            }
        }
    }

    /// A provider failed a call in a way that is safe to retry elsewhere (it did not
    /// run it): the balancer skips it for a while.
    pub(crate) fn skip_provider(&self, addr: SocketAddr, error: &RpcError) {
        if let Route::Cluster(cluster) = &self.inner.route {
            let pause = self.skip_pause();
            cluster.balancer.mark_unhealthy_for(addr, pause);
            tracing::debug!(%addr, %error, ?pause, "provider skipped");
        }
    }

    /// How long a provider that failed (or announced shutdown) is skipped.
    fn skip_pause(&self) -> Duration {
        self.inner
            .config
            .reconnect_backoff
            .max(Duration::from_millis(50))
    }

    /// Sends a request and waits for its response frame (or, for oneway requests,
    /// until it is written). `encode` writes the request with a given request id; it
    /// runs once per attempt. Over several providers, the balancer picks one per
    /// attempt; a call that certainly did not run (the provider could not be reached or
    /// is shutting down) is retried on another provider. The first attempt goes to
    /// `picked` when the caller has already picked a provider.
    pub(crate) async fn call_frame<F>(
        &self,
        encode: F,
        oneway: bool,
        timeout: Duration,
        hash_key: Option<u64>,
        picked: Option<Picked>,
    ) -> Result<Option<Frame>, RpcError>
    where
        F: Fn(&mut BytesMut, u64) -> Result<(), RpcError>,
    {
        let placement = Placement {
            hash_key,
            pinned: None,
            avoid: &[],
        };
        self.call_frame_at(encode, oneway, timeout, &placement, picked)
            .await
            .map(|(frame, _)| frame)
            .map_err(|failed| failed.error)
    }

    /// [`call_frame`](Self::call_frame) with a filter's say in where the call goes
    /// (`placement`: a pinned provider, or providers to avoid), telling which provider
    /// answered or failed.
    ///
    /// A pinned call goes to that provider alone, whatever the balancer's health marks
    /// say (a circuit breaker probing a provider it took out), and is not failed over.
    /// Providers to avoid are avoided while another can take the call; when every
    /// available provider is to be avoided, the balancer picks among all of them
    /// (a third attempt over two providers goes to one of them again).
    ///
    /// # Errors
    ///
    /// The call's error, with the provider that failed it when one was picked.
    pub(crate) async fn call_frame_at<F>(
        &self,
        encode: F,
        oneway: bool,
        timeout: Duration,
        placement: &Placement<'_>,
        mut picked: Option<Picked>,
    ) -> Result<(Option<Frame>, Option<SocketAddr>), Failed>
    where
        F: Fn(&mut BytesMut, u64) -> Result<(), RpcError>,
    {
        let inner = &*self.inner;
        // This task's waker, registered with the call as it is queued (polling the
        // reply updates it should the call move to another task).
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let cluster = match &inner.route {
            Route::Single(endpoint) => {
                let at = Some(endpoint.addr);
                let failed = |error| Failed {
                    error,
                    provider: at,
                };
                let conn = endpoint.connection(inner).await.map_err(failed)?;
                // The connection task enforces the deadline: no timer per call here.
                let reply = conn
                    .submit(&encode, oneway, timeout, &waker)
                    .map_err(failed)?;
                return reply.await.map(|frame| (frame, at)).map_err(failed);
            }
            Route::Cluster(cluster) => cluster,
        };
        let deadline = Instant::now() + timeout;
        let mut ctx = PickContext::new();
        if let Some(key) = placement.hash_key {
            ctx = ctx.hash_key(key);
        }
        let pause = self.skip_pause();
        let attempts = match placement.pinned {
            Some(_) => 1,
            None => cluster.balancer.providers().len().max(1),
        };
        let mut last_error = None;
        for _ in 0..attempts {
            let picked = match picked.take() {
                Some(picked) => picked,
                None => match placement.pick(&cluster.balancer, &ctx) {
                    Some(picked) => picked,
                    None => break,
                },
            };
            let addr = picked.addr();
            let failed = |error| Failed {
                error,
                provider: Some(addr),
            };
            let Some(endpoint) = cluster.balancer.carried(addr) else {
                continue;
            };
            if endpoint.is_draining() {
                // It announced shutdown (GOAWAY): no new calls; try it again later.
                cluster.balancer.mark_unhealthy_for(addr, pause);
                continue;
            }
            let started = std::time::Instant::now();
            let left = deadline.saturating_duration_since(Instant::from_std(started));
            let attempt = match endpoint.connection(inner).await {
                Ok(conn) => match conn.submit(&encode, oneway, left, &waker) {
                    Ok(reply) => reply.await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match attempt {
                Ok(frame) => {
                    picked.record_success_since(started);
                    return Ok((frame, Some(addr)));
                }
                Err(e) => {
                    let (_, e) = self
                        .fail_over(&picked, started.elapsed(), e)
                        .map_err(failed)?;
                    last_error = Some(failed(e));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Failed {
            error: RpcError::NoProvider {
                service: cluster.balancer.service().to_owned(),
            },
            provider: None,
        }))
    }
}

/// Where a filter wants a call to go (see [`Client::call_frame_at`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement<'a> {
    /// Affinity key for the `ip-hash` balancer.
    pub(crate) hash_key: Option<u64>,
    /// Send to this provider alone.
    pub(crate) pinned: Option<SocketAddr>,
    /// Prefer providers not in this list.
    pub(crate) avoid: &'a [SocketAddr],
}

impl Placement<'_> {
    /// The provider for the next attempt: the pinned one, or the balancer's pick
    /// outside `avoid` if there is one, else among all. `None` when there is none.
    fn pick(&self, balancer: &Balancer, ctx: &PickContext) -> Option<Picked> {
        if let Some(addr) = self.pinned {
            return balancer.pick_addr(addr);
        }
        if !self.avoid.is_empty() {
            if let Ok(picked) = balancer.pick_excluding(ctx, self.avoid) {
                return Some(picked);
            }
        }
        balancer.pick(ctx).ok()
    }
}

/// A call that failed, and the provider that failed it (`None` when none was
/// picked: no provider available).
#[derive(Debug)]
pub(crate) struct Failed {
    /// Why.
    pub(crate) error: RpcError,
    /// Who.
    pub(crate) provider: Option<SocketAddr>,
}

impl Client {
    /// The failover rule, for every attempt on a picked provider that failed (in the
    /// loop above, and in a call's fast path before it joins that loop): the failure is
    /// recorded on the provider; a call that certainly did not run (see
    /// [`RpcError::is_safe_to_retry`]) may go to another provider, and this one is
    /// skipped for a while; any other error is the call's outcome.
    ///
    /// `spent` is how long the attempt took; it is returned with the error when another
    /// provider may be tried.
    ///
    /// # Errors
    ///
    /// `error` when the call must not be retried elsewhere.
    pub(crate) fn fail_over(
        &self,
        picked: &Picked,
        spent: Duration,
        error: RpcError,
    ) -> Result<(Duration, RpcError), RpcError> {
        picked.record_failure(spent);
        if !error.is_safe_to_retry() {
            return Err(error);
        }
        self.skip_provider(picked.addr(), &error);
        Ok((spent, error))
    }
}

/// A connection ready to take a call now, from [`Client::ready_connection`].
pub(crate) struct Ready {
    /// The connection.
    pub(crate) conn: Connection,
    /// The provider picked, for a cluster: its in-flight count includes this call until
    /// this is dropped, and the call's outcome is recorded on it.
    pub(crate) picked: Option<Picked>,
}
