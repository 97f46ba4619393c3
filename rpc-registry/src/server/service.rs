//! [`RegistryService`]: the `RegistryApi` implementation, a thin layer over the state
//! that adds the waiting of long polls.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_core::server::CallContext;
use tokio_util::sync::CancellationToken;

use super::state::{Poll, State};
use crate::api::{
    ConsumerInfo, Instance, InstanceKey, Lease, LeaseId, LeaseRequest, LoadReport, RegistryApi,
    RegistryError, Revision, ServiceSummary, ServiceView,
};

/// Serves the registry operations.
#[derive(Debug)]
pub(crate) struct RegistryService {
    /// Shared with the sweep.
    state: Arc<State>,
    /// Cancelled on shutdown: long polls answer at once.
    cancel: CancellationToken,
}

impl RegistryService {
    pub(crate) fn new(state: Arc<State>, cancel: CancellationToken) -> RegistryService {
        RegistryService { state, cancel }
    }
}

impl RegistryApi for RegistryService {
    async fn grant(&self, request: LeaseRequest) -> Result<Lease, RegistryError> {
        self.state.grant(request, Instant::now())
    }

    async fn heartbeat(&self, lease: LeaseId) -> Result<(), RegistryError> {
        self.state.heartbeat(lease, Instant::now())
    }

    async fn heartbeat_with_load(
        &self,
        lease: LeaseId,
        load: LoadReport,
    ) -> Result<(), RegistryError> {
        self.state.heartbeat_with_load(lease, load, Instant::now())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), RegistryError> {
        self.state.revoke(lease)
    }

    async fn register(
        &self,
        lease: LeaseId,
        instance: Instance,
    ) -> Result<Revision, RegistryError> {
        self.state.register(lease, instance, Instant::now())
    }

    async fn deregister(
        &self,
        lease: LeaseId,
        key: InstanceKey,
    ) -> Result<Revision, RegistryError> {
        self.state.deregister(lease, key)
    }

    async fn register_consumer(
        &self,
        lease: LeaseId,
        consumer: ConsumerInfo,
    ) -> Result<(), RegistryError> {
        let peer = CallContext::with_current(|call| call.map(|c| c.peer));
        self.state
            .register_consumer(lease, consumer, peer, Instant::now())
    }

    async fn lookup(&self, service: String) -> Result<ServiceView, RegistryError> {
        self.state.lookup(&service)
    }

    async fn watch(
        &self,
        service: String,
        since: Revision,
        wait_ms: u64,
    ) -> Result<ServiceView, RegistryError> {
        let mut changed = match self.state.poll(&service, since)? {
            Poll::Ready(view) => return Ok(view),
            Poll::Wait(changed) => changed,
        };
        let wait = Duration::from_millis(wait_ms).min(self.state.config().max_watch_wait);
        let waiting = &self.state.counters().watches_waiting;
        waiting.fetch_add(1, Ordering::Relaxed);
        // Counted out however the wait ends, a dropped call too.
        let _waited = OnDrop(|| {
            waiting.fetch_sub(1, Ordering::Relaxed);
        });
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = changed.wait_for(|index| *index > since.index) => {}
        }
        Ok(self.state.view(&service))
    }

    async fn services(&self) -> Vec<ServiceSummary> {
        self.state.services()
    }

    async fn consumers(&self, service: String) -> Result<Vec<ConsumerInfo>, RegistryError> {
        self.state.consumers(&service)
    }
}

/// Runs `f` when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
