//! [`SlidingWindow`]: two counts over a sliding time window, for the retry budget
//! (calls, retries) and the circuit breaker (calls, failures).

use std::time::{Duration, Instant};

/// How many slots a window is cut into: it slides by a tenth.
const SLOTS: usize = 10;

/// Two counts over the last `window`, kept in [`SLOTS`] slots; a slot older than the
/// window is cleared when its place is reused. Not synchronized: its owner locks it.
#[derive(Debug, Clone)]
pub(crate) struct SlidingWindow {
    /// How long a slot lasts.
    slot_len: Duration,
    /// Time zero of the slot numbers.
    epoch: Instant,
    /// The slot number each entry counts for.
    number: [u64; SLOTS],
    /// The first count, per slot.
    first: [u64; SLOTS],
    /// The second count, per slot.
    second: [u64; SLOTS],
}

impl SlidingWindow {
    /// An empty window `window` long, starting at `now`.
    pub(crate) fn new(window: Duration, now: Instant) -> SlidingWindow {
        SlidingWindow {
            slot_len: (window / SLOTS as u32).max(Duration::from_nanos(1)),
            epoch: now,
            // No slot has a number yet: the first use of each clears it.
            number: [u64::MAX; SLOTS],
            first: [0; SLOTS],
            second: [0; SLOTS],
        }
    }

    /// The slot number of `now`.
    fn number_at(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos / self.slot_len.as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Adds to the counts at `now`.
    pub(crate) fn add(&mut self, now: Instant, first: u64, second: u64) {
        let number = self.number_at(now);
        let i = (number % SLOTS as u64) as usize;
        if self.number[i] != number {
            self.number[i] = number;
            self.first[i] = 0;
            self.second[i] = 0;
        }
        self.first[i] += first;
        self.second[i] += second;
    }

    /// Both counts over the window ending at `now`.
    pub(crate) fn totals(&self, now: Instant) -> (u64, u64) {
        let number = self.number_at(now);
        (0..SLOTS)
            .filter(|&i| self.number[i] <= number && number - self.number[i] < SLOTS as u64)
            .fold((0, 0), |(a, b), i| (a + self.first[i], b + self.second[i]))
    }

    /// Forgets everything counted.
    pub(crate) fn clear(&mut self) {
        self.number = [u64::MAX; SLOTS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_of_the_window() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(Duration::from_secs(10), t0);
        w.add(t0, 4, 1);
        w.add(t0 + Duration::from_secs(5), 2, 2);
        assert_eq!(w.totals(t0 + Duration::from_secs(6)), (6, 3));
        assert_eq!(w.totals(t0 + Duration::from_millis(10_500)), (2, 2));
        assert_eq!(w.totals(t0 + Duration::from_secs(30)), (0, 0));
        w.add(t0 + Duration::from_secs(30), 1, 0);
        assert_eq!(w.totals(t0 + Duration::from_secs(30)), (1, 0));
        w.clear();
        assert_eq!(w.totals(t0 + Duration::from_secs(30)), (0, 0));
    }
}
