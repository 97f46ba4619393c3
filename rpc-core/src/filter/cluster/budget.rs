//! [`RetryBudget`]: retries capped as a share of calls, plus a small floor per second
//! (Finagle's retry budget), shared by every call of a client so that retries cannot
//! multiply an overload.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::RpcError;
use crate::filter::window::SlidingWindow;

/// A cap on retries (and hedged copies) over a sliding window: within any `window`,
/// at most `ratio` × calls + `min_per_second` × window-in-seconds retries are allowed.
/// A call deposits its share when it starts; a retry withdraws one or is refused.
///
/// Under a cluster that fails every call, a client with a 10 % budget sends at most
/// 1.1 times its calls (plus the floor), however many retries its policies allow;
/// a healthy cluster's occasional failure still gets its retries.
///
/// Defaults: ratio 0.2, floor 10 retries per second, window 10 s (Finagle's).
///
/// ```
/// use std::time::Duration;
/// use rpc_core::filter::cluster::RetryBudget;
/// let budget = RetryBudget::builder()
///     .ratio(0.1)
///     .min_per_second(0)
///     .window(Duration::from_secs(10))
///     .build()?;
/// for _ in 0..100 {
///     budget.deposit();
/// }
/// let allowed = (0..100).filter(|_| budget.try_withdraw()).count();
/// assert_eq!(allowed, 10);
/// # Ok::<(), rpc_core::RpcError>(())
/// ```
pub struct RetryBudget {
    /// Share of calls that may be retried.
    ratio: f64,
    /// Retries allowed per second whatever the calls (so a client making few calls
    /// can still retry one).
    min_per_second: u32,
    /// How far back calls and retries count.
    window: Duration,
    /// Calls and retries over the window, and since the start.
    state: Mutex<Counts>,
    /// Retries refused since the start, for operators.
    refused: AtomicU64,
}

/// A budget's counts.
#[derive(Debug)]
struct Counts {
    /// Calls and retries over the window.
    window: SlidingWindow,
    /// Calls since the start.
    total_calls: u64,
    /// Retries allowed since the start.
    total_retries: u64,
}

/// What a [`RetryBudget`] has counted since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetStats {
    /// Calls deposited.
    pub calls: u64,
    /// Retries (and hedged copies) allowed.
    pub retries: u64,
    /// Retries refused because the budget was spent.
    pub refused: u64,
}

impl RetryBudget {
    /// A builder with the defaults.
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder::default()
    }

    /// Counts a call.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Counts a call; returns the time it read, so the caller needs no clock of its
    /// own.
    pub(crate) fn deposit_now(&self) -> Instant {
        let now = Instant::now();
        self.deposit_at(now);
        now
    }

    /// Takes one retry out of the budget; `false` (and nothing taken) when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    /// What the budget has counted.
    pub fn stats(&self) -> BudgetStats {
        let state = self.state.lock();
        BudgetStats {
            calls: state.total_calls,
            retries: state.total_retries,
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// The share of calls that may be retried.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    fn deposit_at(&self, now: Instant) {
        let mut state = self.state.lock();
        state.window.add(now, 1, 0);
        state.total_calls += 1;
    }

    fn try_withdraw_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        let (calls, retries) = state.window.totals(now);
        let floor = f64::from(self.min_per_second) * self.window.as_secs_f64();
        let allowed = (self.ratio * calls as f64 + floor).floor() as u64;
        if retries < allowed {
            state.window.add(now, 0, 1);
            state.total_retries += 1;
            true
        } else {
            drop(state);
            self.refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .field("min_per_second", &self.min_per_second)
            .field("window", &self.window)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Builds a [`RetryBudget`], checking its settings.
#[derive(Debug, Clone)]
pub struct RetryBudgetBuilder {
    /// See [`ratio`](Self::ratio).
    ratio: f64,
    /// See [`min_per_second`](Self::min_per_second).
    min_per_second: u32,
    /// See [`window`](Self::window).
    window: Duration,
}

impl Default for RetryBudgetBuilder {
    fn default() -> Self {
        RetryBudgetBuilder {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

impl RetryBudgetBuilder {
    /// The share of calls that may be retried, in `[0, 1]`. Default 0.2.
    ///
    /// ```
    /// let b = rpc_core::filter::cluster::RetryBudget::builder().ratio(0.1);
    /// ```
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Retries allowed per second on top of the ratio (0 for none). Default 10.
    ///
    /// ```
    /// let b = rpc_core::filter::cluster::RetryBudget::builder().min_per_second(2);
    /// ```
    pub fn min_per_second(mut self, retries: u32) -> Self {
        self.min_per_second = retries;
        self
    }

    /// How far back calls and retries count; at least 10 ms. Default 10 s.
    ///
    /// ```
    /// let b = rpc_core::filter::cluster::RetryBudget::builder()
    ///     .window(std::time::Duration::from_secs(30));
    /// ```
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The budget.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidConfig`] for a ratio outside `[0, 1]` (or not a number) or a
    /// window under 10 ms.
    pub fn build(self) -> Result<RetryBudget, RpcError> {
        if !(0.0..=1.0).contains(&self.ratio) {
            return Err(RpcError::InvalidConfig(format!(
                "the retry budget's ratio must be between 0 and 1, not {}",
                self.ratio
            )));
        }
        if self.window < Duration::from_millis(10) {
            return Err(RpcError::InvalidConfig(format!(
                "the retry budget's window must be at least 10 ms, not {:?}",
                self.window
            )));
        }
        Ok(RetryBudget {
            ratio: self.ratio,
            min_per_second: self.min_per_second,
            window: self.window,
            state: Mutex::new(Counts {
                window: SlidingWindow::new(self.window, Instant::now()),
                total_calls: 0,
                total_retries: 0,
            }),
            refused: AtomicU64::new(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, floor: u32) -> RetryBudget {
        RetryBudget::builder()
            .ratio(ratio)
            .min_per_second(floor)
            .window(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    #[test]
    fn retries_are_a_share_of_calls_plus_the_floor() {
        let b = budget(0.25, 1);
        let t0 = Instant::now();
        for _ in 0..40 {
            b.deposit_at(t0);
        }
        // 0.25 * 40 + 1/s * 10 s = 20.
        let allowed = (0..100).filter(|_| b.try_withdraw_at(t0)).count();
        assert_eq!(allowed, 20);
        assert_eq!(b.stats().refused, 80);
    }

    #[test]
    fn old_calls_leave_the_window() {
        let b = budget(0.5, 0);
        let t0 = Instant::now();
        for _ in 0..10 {
            b.deposit_at(t0);
        }
        assert!(b.try_withdraw_at(t0 + Duration::from_secs(5)));
        // Eleven seconds on, those calls are out of the window: nothing to spend.
        assert!(!b.try_withdraw_at(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn bad_settings_are_refused() {
        for ratio in [-0.1, 1.5, f64::NAN] {
            let e = RetryBudget::builder().ratio(ratio).build().unwrap_err();
            assert!(matches!(e, RpcError::InvalidConfig(_)), "{e}");
        }
        let e = RetryBudget::builder()
            .window(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
    }
}
