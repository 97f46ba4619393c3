//! What an operator sees of a service: [`ServiceStatus`] with its instances
//! ([`InstanceStatus`]: health, age, last heartbeat, the operator's [`Override`]),
//! consumers and live [`Load`]. Built by the state on demand (the dashboard's JSON API
//! serves these as they are); nothing here is on the registration or watch path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{ConsumerInfo, MethodLoad};

/// An operator's change to one instance (Dubbo's configurator), kept by the registry
/// by service and address, so it outlives the instance's lease: a provider that
/// restarts and registers again at the same address is overridden again at once.
/// Consumers see the effect in the views they watch (a new weight; a disabled instance
/// is left out), so every consumer follows it, old ones too.
///
/// ```
/// let o = rpc_registry::Override::default();
/// assert!(o.is_empty());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Override {
    /// The weight consumers use instead of the registered one; `None`: the registered.
    pub weight: Option<u32>,
    /// Left out of consumers' provider lists while set.
    pub disabled: bool,
}

impl Override {
    /// Whether it changes nothing (and may be forgotten).
    pub fn is_empty(&self) -> bool {
        self.weight.is_none() && !self.disabled
    }
}

/// How an instance looks to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Health {
    /// Heartbeating on time and receiving calls.
    Healthy,
    /// Its last heartbeat is older than one and a half heartbeat intervals: it is
    /// alive by its lease but may be about to be evicted.
    Late,
    /// An operator disabled it: consumers do not call it.
    Disabled,
    /// Weight 0 (registered or overridden): balancers send it no calls.
    Parked,
}

/// Live numbers of a method, an instance or a service, from the providers' load
/// reports. Rates are per second over each provider's last heartbeat interval. Across
/// methods and instances, calls and errors add up and the mean is weighted by calls;
/// the percentiles are the worst of the parts (percentiles of different histograms do
/// not combine).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Load {
    /// Calls that ended per second.
    pub calls_per_s: f64,
    /// Share of those that failed, 0 to 1.
    pub error_rate: f64,
    /// Mean latency, milliseconds.
    pub mean_ms: f64,
    /// Median latency, milliseconds (histogram bucket bound).
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds (histogram bucket bound).
    pub p99_ms: f64,
    /// Calls running at the last report.
    pub in_flight: u64,
    /// Per method, by name (empty on a method's own entry).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub methods: BTreeMap<String, Load>,
}

/// Sums loads: calls, errors and in-flight add, the mean is weighted, percentiles take
/// the worst.
#[derive(Debug, Default)]
pub(crate) struct LoadSum {
    calls_per_s: f64,
    errors_per_s: f64,
    latency_weighted: f64,
    p50_ms: f64,
    p99_ms: f64,
    in_flight: u64,
    methods: BTreeMap<String, LoadSum>,
}

impl LoadSum {
    /// Adds one method's report over a window of `window_s` seconds.
    pub(crate) fn add_method(&mut self, load: &MethodLoad, window_s: f64) {
        let part = LoadSum {
            calls_per_s: load.calls as f64 / window_s,
            errors_per_s: load.errors as f64 / window_s,
            latency_weighted: load.calls as f64 / window_s * load.mean_us as f64 / 1000.0,
            p50_ms: load.p50_us as f64 / 1000.0,
            p99_ms: load.p99_us as f64 / 1000.0,
            in_flight: load.in_flight,
            methods: BTreeMap::new(),
        };
        self.absorb(&part);
        self.methods
            .entry(load.method.clone())
            .or_default()
            .absorb(&part);
    }

    /// Adds another sum (an instance's into its service's).
    pub(crate) fn add(&mut self, other: &LoadSum) {
        self.absorb(other);
        for (method, sum) in &other.methods {
            self.methods.entry(method.clone()).or_default().absorb(sum);
        }
    }

    fn absorb(&mut self, other: &LoadSum) {
        self.calls_per_s += other.calls_per_s;
        self.errors_per_s += other.errors_per_s;
        self.latency_weighted += other.latency_weighted;
        self.p50_ms = self.p50_ms.max(other.p50_ms);
        self.p99_ms = self.p99_ms.max(other.p99_ms);
        self.in_flight += other.in_flight;
    }

    /// The load it adds up to.
    pub(crate) fn load(&self) -> Load {
        let mut load = self.own();
        load.methods = self
            .methods
            .iter()
            .map(|(name, sum)| (name.clone(), sum.own()))
            .collect();
        load
    }

    fn own(&self) -> Load {
        let ratio = |part: f64| {
            if self.calls_per_s > 0.0 {
                part / self.calls_per_s
            } else {
                0.0
            }
        };
        Load {
            calls_per_s: self.calls_per_s,
            error_rate: ratio(self.errors_per_s),
            mean_ms: ratio(self.latency_weighted),
            p50_ms: self.p50_ms,
            p99_ms: self.p99_ms,
            in_flight: self.in_flight,
            methods: BTreeMap::new(),
        }
    }
}

/// One instance as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InstanceStatus {
    /// Where consumers call it.
    pub addr: String,
    /// Its group.
    pub group: String,
    /// Its version.
    pub version: String,
    /// The weight consumers use: the override's, else the registered one.
    pub weight: u32,
    /// The weight it registered with.
    pub registered_weight: u32,
    /// The operator's override in force (empty when none).
    #[serde(rename = "override")]
    pub operator_override: Override,
    /// How it looks.
    pub health: Health,
    /// When it started (ms since the Unix epoch; 0 unknown).
    pub started_at_ms: u64,
    /// How long ago it started, milliseconds (0 unknown).
    pub age_ms: u64,
    /// How long ago its lease last heard from it (heartbeat or registration),
    /// milliseconds.
    pub last_heartbeat_ms: u64,
    /// Its lease's id, as `rpcctl` and the logs print it.
    pub lease: String,
    /// Who holds the lease (the provider program).
    pub owner: String,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
    /// The methods it listed.
    pub methods: Vec<String>,
    /// Its live numbers; zero when it does not report load (or stopped reporting).
    pub load: Load,
    /// How long ago its last load report arrived, milliseconds; `None`: never.
    pub load_reported_ms: Option<u64>,
}

/// One service as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceStatus {
    /// The service.
    pub service: String,
    /// Its revision index (moves on every change consumers see).
    pub revision: u64,
    /// Every registered instance, disabled ones included, by address.
    pub instances: Vec<InstanceStatus>,
    /// Its registered consumers.
    pub consumers: Vec<ConsumerInfo>,
    /// Every override, by address, including those of addresses not registered now
    /// (a provider that is down keeps its override for when it comes back).
    pub overrides: BTreeMap<String, Override>,
    /// The instances' numbers added up.
    pub load: Load,
}
