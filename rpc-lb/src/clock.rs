//! [`Timestamp`]: the balancer's clock.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// An instant on the balancer's monotonic clock: nanoseconds since an epoch shared by
/// the whole process.
///
/// [`ProviderStats`](crate::ProviderStats) keeps its times in this form, and
/// subtracting two timestamps is one integer subtraction (an [`Instant`]'s arithmetic
/// is several branches), so a transport that reads its clock once per batch of calls
/// can convert that reading once and stamp every call of the batch with it; reporting
/// a call's latency then costs the balancer no clock reading and no conversion
/// ([`Picked::record_success_between`](crate::Picked::record_success_between)).
///
/// ```
/// use rpc_lb::Timestamp;
/// use std::time::{Duration, Instant};
///
/// let sent = Instant::now();
/// let (a, b) = (Timestamp::of(sent), Timestamp::of(sent + Duration::from_millis(5)));
/// assert_eq!(b.since(a), Duration::from_millis(5));
/// assert_eq!(a.since(b), Duration::ZERO, "saturates");
/// assert!(Timestamp::now() >= a);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::of(Instant::now())
    }

    /// `at` on this clock. An instant before the epoch (an hour before the first
    /// balancer or timestamp made in the process) is the epoch itself.
    pub fn of(at: Instant) -> Self {
        // In u64 arithmetic: `as_nanos` is a u128, dearer to make and to convert.
        let since = at.saturating_duration_since(epoch());
        Self(
            since
                .as_secs()
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::from(since.subsec_nanos())),
        )
    }

    /// The time from `earlier` to this timestamp; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Nanoseconds since the epoch.
    pub fn as_nanos(self) -> u64 {
        self.0
    }
}

/// The process-wide time zero of [`Timestamp`]s: an hour before the first balancer or
/// timestamp of the process was made (or the clock's own zero, if that is later), so
/// that instants a program took just before are not all the same timestamp.
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        [3600, 60, 1]
            .into_iter()
            .find_map(|secs| now.checked_sub(Duration::from_secs(secs)))
            .unwrap_or(now)
    })
}
