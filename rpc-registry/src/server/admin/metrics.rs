//! The registry's own metrics at `GET /metrics`, in Prometheus' (OpenMetrics) text
//! format, encoded by `prometheus-client` from the state at each scrape:
//!
//! | series | type | labels |
//! |---|---|---|
//! | `rpc_registry_leases`, `rpc_registry_instances`, `rpc_registry_services` | gauge | |
//! | `rpc_registry_watches_waiting` | gauge | |
//! | `rpc_registry_leases_granted_total`, `..._revoked_total`, `..._expired_total` | counter | |
//! | `rpc_registry_instances_evicted_total` | counter | |
//! | `rpc_registry_registrations_total`, `rpc_registry_deregistrations_total` | counter | |
//! | `rpc_registry_consumer_registrations_total` | counter | |
//! | `rpc_registry_heartbeats_total`, `rpc_registry_load_reports_total` | counter | |
//! | `rpc_registry_lookups_total`, `rpc_registry_watches_total` | counter | |
//! | `rpc_registry_overrides_changed_total` | counter | |
//! | `rpc_registry_service_instances`, `..._consumers`, `..._watchers` | gauge | `service` |
//! | `rpc_registry_service_calls_per_second`, `..._error_ratio` | gauge | `service` |

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State as Extract;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::super::state::{ServiceGauges, State};
use super::api::Admin;

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`.
pub(super) async fn scrape(Extract(admin): Extract<Admin>) -> Response {
    ([(CONTENT_TYPE, OPENMETRICS)], encode(&admin.state)).into_response()
}

/// The state's metrics as text.
pub(crate) fn encode(state: &Arc<State>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StateCollector(Arc::clone(state))));
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// Reads the state at each scrape.
#[derive(Debug)]
struct StateCollector(Arc<State>);

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let state = &self.0;
        let services = state.service_gauges();
        let gauge = |encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64| {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(family)
        };
        gauge(
            &mut encoder,
            "rpc_registry_leases",
            "Live leases",
            state.lease_count() as i64,
        )?;
        gauge(
            &mut encoder,
            "rpc_registry_instances",
            "Live instances in all services",
            state.instance_count() as i64,
        )?;
        gauge(
            &mut encoder,
            "rpc_registry_services",
            "Services with instances, consumers, watchers or overrides",
            services.len() as i64,
        )?;
        let c = state.counters();
        gauge(
            &mut encoder,
            "rpc_registry_watches_waiting",
            "Watch long polls waiting now",
            c.watches_waiting.load(Ordering::Relaxed),
        )?;
        let counters: [(&str, &str, &AtomicU64); 13] = [
            (
                "rpc_registry_leases_granted",
                "Leases granted",
                &c.leases_granted,
            ),
            (
                "rpc_registry_leases_revoked",
                "Leases revoked (graceful departures)",
                &c.leases_revoked,
            ),
            (
                "rpc_registry_leases_expired",
                "Leases evicted after their TTL",
                &c.leases_expired,
            ),
            (
                "rpc_registry_instances_evicted",
                "Instances evicted with expired leases",
                &c.instances_evicted,
            ),
            (
                "rpc_registry_registrations",
                "Instance registrations and updates",
                &c.registrations,
            ),
            (
                "rpc_registry_deregistrations",
                "Graceful deregistrations of single instances",
                &c.deregistrations,
            ),
            (
                "rpc_registry_consumer_registrations",
                "Consumer announcements",
                &c.consumer_registrations,
            ),
            (
                "rpc_registry_heartbeats",
                "Heartbeats, with or without a load report",
                &c.heartbeats,
            ),
            (
                "rpc_registry_load_reports",
                "Heartbeats carrying a provider's load report",
                &c.load_reports,
            ),
            ("rpc_registry_lookups", "Lookups", &c.lookups),
            (
                "rpc_registry_watches",
                "Watch long polls started",
                &c.watches,
            ),
            (
                "rpc_registry_overrides_changed",
                "Operator override changes",
                &c.overrides_changed,
            ),
            (
                "rpc_registry_admin_scrapes",
                "Scrapes of these metrics",
                &c.scrapes,
            ),
        ];
        c.scrapes.fetch_add(1, Ordering::Relaxed);
        for (name, help, value) in counters {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(family)?;
        }
        type Count = fn(&ServiceGauges) -> usize;
        let per_service: [(&str, &str, Count); 3] = [
            (
                "rpc_registry_service_instances",
                "Live instances of the service",
                |s| s.instances,
            ),
            (
                "rpc_registry_service_consumers",
                "Registered consumers of the service",
                |s| s.consumers,
            ),
            (
                "rpc_registry_service_watchers",
                "Watches waiting on the service",
                |s| s.watchers,
            ),
        ];
        for (name, help, value) in per_service {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for service in &services {
                let labels = [("service", service.service.as_str())];
                ConstGauge::new(value(service) as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let statuses = state.statuses(Instant::now());
        let mut family = encoder.encode_descriptor(
            "rpc_registry_service_calls_per_second",
            "Calls per second the service's providers reported",
            None,
            MetricType::Gauge,
        )?;
        for status in &statuses {
            let labels = [("service", status.service.as_str())];
            ConstGauge::new(status.load.calls_per_s).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "rpc_registry_service_error_ratio",
            "Share of the service's calls that failed, as its providers reported",
            None,
            MetricType::Gauge,
        )?;
        for status in &statuses {
            let labels = [("service", status.service.as_str())];
            ConstGauge::new(status.load.error_rate).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
