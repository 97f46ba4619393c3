//! The tables of the default setup (`rpc-bench --config default`): calls, latencies and
//! both processes' peak RSS per cell, and issue 12's targets marked met or not.

use std::fmt::Write as _;

use crate::report::{micros, payload_label};
use crate::setup::Sample;
use crate::systems::System;

/// One cell of the default setup: one payload size at one in-flight count.
#[derive(Debug, Clone, PartialEq)]
pub struct DefaultCell {
    /// Payload size in bytes.
    pub payload: usize,
    /// Calls in flight.
    pub in_flight: usize,
    /// Each system's sample (median over the rounds), or why it failed.
    pub results: Vec<(System, Result<Sample, String>)>,
}

impl DefaultCell {
    /// The valid sample of `system`.
    fn get(&self, system: System) -> Option<&Sample> {
        self.results.iter().find_map(|(s, r)| match r {
            Ok(sample) if *s == system && sample.measurement.errors == 0 => Some(sample),
            _ => None,
        })
    }

    /// `f(ours) / f(raw)`, if both ran and raw's figure is not zero.
    fn ratio(&self, f: impl Fn(&Sample) -> f64) -> Option<f64> {
        let (ours, raw) = (self.get(System::Ours)?, self.get(System::Raw)?);
        (f(raw) > 0.0).then(|| f(ours) / f(raw))
    }

    /// `text(sample)` of `system`, or `error` / `–`.
    fn show(&self, system: System, text: impl Fn(&Sample) -> String) -> String {
        match self.get(system) {
            Some(sample) => text(sample),
            None if self.results.iter().any(|(s, _)| *s == system) => "error".to_owned(),
            None => "–".to_owned(),
        }
    }
}

/// Systems in the order the table shows them.
const SHOWN: [System; 3] = [System::Ours, System::Raw, System::Tarpc];

/// The results table: calls/s, latencies, ours/raw ratios and peak RSS of the server
/// and client processes, per cell.
pub fn default_table(cells: &[DefaultCell]) -> String {
    let mut out = String::new();
    out.push_str(
        "| payload | in flight | ours calls/s | raw calls/s | tarpc calls/s | ours/raw calls/s \
         | ours p50/p99/p999 µs | raw p50/p99/p999 µs | tarpc p50/p99/p999 µs \
         | ours/raw p99 | ours/raw p999 | server peak RSS MiB ours/raw/tarpc \
         | client peak RSS MiB ours/raw/tarpc |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    for cell in cells {
        let rate = |s| cell.show(s, |x| format!("{:.0}", x.measurement.calls_per_sec()));
        let latency = |s| {
            cell.show(s, |x| {
                let m = &x.measurement;
                format!("{} / {} / {}", micros(m.p50), micros(m.p99), micros(m.p999))
            })
        };
        let ratio = |r: Option<f64>| r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}"));
        let peaks = |f: fn(&Sample) -> u64| {
            SHOWN
                .iter()
                .map(|s| cell.show(*s, |x| mib(f(x))))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            payload_label(cell.payload),
            cell.in_flight,
            rate(System::Ours),
            rate(System::Raw),
            rate(System::Tarpc),
            ratio(cell.ratio(|x| x.measurement.calls_per_sec())),
            latency(System::Ours),
            latency(System::Raw),
            latency(System::Tarpc),
            ratio(cell.ratio(|x| x.measurement.p99.as_secs_f64())),
            ratio(cell.ratio(|x| x.measurement.p999.as_secs_f64())),
            peaks(|x| x.server_peak_kib),
            peaks(|x| x.client_peak_kib),
        );
    }
    out
}

/// One of issue 12's targets: which cells it applies to, the ratio it bounds.
struct Target {
    /// What the table calls it.
    name: &'static str,
    /// Whether it applies to a cell of (payload, in flight).
    applies: fn(usize, usize) -> bool,
    /// Ours over raw, of the figure it bounds.
    figure: fn(&Sample) -> f64,
    /// The bound on ours/raw.
    bound: f64,
    /// Whether the ratio must be at least (true) or at most `bound`.
    at_least: bool,
}

/// Issue 12, item 2, as ours/raw ratios.
const TARGETS: [Target; 5] = [
    Target {
        name: "calls/s ≥ 0.9 × raw (1 in flight)",
        applies: |_, in_flight| in_flight == 1,
        figure: |x| x.measurement.calls_per_sec(),
        bound: 0.9,
        at_least: true,
    },
    Target {
        name: "p99 ≤ 1.2 × raw (1 in flight)",
        applies: |_, in_flight| in_flight == 1,
        figure: |x| x.measurement.p99.as_secs_f64(),
        bound: 1.2,
        at_least: false,
    },
    Target {
        name: "p999 ≤ 2 × raw (64 KiB)",
        applies: |payload, _| payload == 64 * 1024,
        figure: |x| x.measurement.p999.as_secs_f64(),
        bound: 2.0,
        at_least: false,
    },
    Target {
        name: "server peak RSS ≤ 1.5 × raw (64 KiB × 256)",
        applies: |payload, in_flight| payload == 64 * 1024 && in_flight == 256,
        figure: |x| x.server_peak_kib as f64,
        bound: 1.5,
        at_least: false,
    },
    Target {
        name: "client peak RSS ≤ 1.5 × raw (64 KiB × 256)",
        applies: |payload, in_flight| payload == 64 * 1024 && in_flight == 256,
        figure: |x| x.client_peak_kib as f64,
        bound: 1.5,
        at_least: false,
    },
];

/// Every target of issue 12 that applies to a measured cell, with ours/raw and
/// whether it is met; `None` if no target applies to any cell.
pub fn targets_table(cells: &[DefaultCell]) -> Option<String> {
    let mut out = String::new();
    for target in &TARGETS {
        for cell in cells {
            if !(target.applies)(cell.payload, cell.in_flight) {
                continue;
            }
            let (ratio, verdict) = match cell.ratio(target.figure) {
                Some(r) if (r >= target.bound) == target.at_least || r == target.bound => {
                    (format!("{r:.2}"), "met")
                }
                Some(r) => (format!("{r:.2}"), "**not met**"),
                None => ("–".to_owned(), "not measured"),
            };
            let _ = writeln!(
                out,
                "| {} | {} × {} | {ratio} | {verdict} |",
                target.name,
                payload_label(cell.payload),
                cell.in_flight
            );
        }
    }
    (!out.is_empty()).then(|| format!("| target | cell | ours/raw | |\n|---|---|---:|---|\n{out}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::load::Measurement;

    fn sample(calls: u64, p99_us: u64, peak_kib: u64) -> Sample {
        Sample {
            measurement: Measurement {
                calls,
                seconds: 1.0,
                p50: Duration::from_micros(10),
                p99: Duration::from_micros(p99_us),
                p999: Duration::from_micros(p99_us * 2),
                errors: 0,
                first_error: None,
            },
            server_peak_kib: peak_kib,
            client_peak_kib: 2 * peak_kib,
        }
    }

    #[test]
    fn marks_targets_per_cell() {
        let cells = [
            DefaultCell {
                payload: 16,
                in_flight: 1,
                results: vec![
                    (System::Ours, Ok(sample(85, 100, 1024))),
                    (System::Raw, Ok(sample(100, 100, 1024))),
                ],
            },
            DefaultCell {
                payload: 65536,
                in_flight: 256,
                results: vec![
                    (System::Ours, Ok(sample(100, 300, 3072))),
                    (System::Raw, Err("boom".to_owned())),
                ],
            },
        ];
        let table = default_table(&cells);
        let row = table.lines().nth(2).unwrap();
        assert!(
            row.starts_with("| 16 B | 1 | 85 | 100 | – | 0.85 |"),
            "{row}"
        );
        assert!(
            row.ends_with("| 1.00 | 1.00 | 1.0 / 1.0 / – | 2.0 / 2.0 / – |"),
            "{row}"
        );
        let targets = targets_table(&cells).unwrap();
        let rows: Vec<&str> = targets.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| calls/s ≥ 0.9 × raw (1 in flight) | 16 B × 1 | 0.85 | **not met** |",
                "| p99 ≤ 1.2 × raw (1 in flight) | 16 B × 1 | 1.00 | met |",
                "| p999 ≤ 2 × raw (64 KiB) | 64 KiB × 256 | – | not measured |",
                "| server peak RSS ≤ 1.5 × raw (64 KiB × 256) | 64 KiB × 256 | – | not measured |",
                "| client peak RSS ≤ 1.5 × raw (64 KiB × 256) | 64 KiB × 256 | – | not measured |",
            ]
        );
    }
}
