//! The results table, in markdown.

use std::fmt::Write as _;
use std::time::Duration;

use crate::load::{ClientChain, Measurement};
use crate::systems::System;

/// The results of one cell of the grid: one payload size at one in-flight count.
#[derive(Debug, Clone, PartialEq)]
pub struct CellResult {
    /// Payload size in bytes.
    pub payload: usize,
    /// Calls in flight.
    pub in_flight: usize,
    /// Each system's measurement, or why it failed; systems not run are absent.
    pub results: Vec<(System, Result<Measurement, String>)>,
}

impl CellResult {
    /// The valid measurement of `system` (present, and with no failed call).
    pub fn get(&self, system: System) -> Option<&Measurement> {
        self.results.iter().find_map(|(s, r)| match r {
            Ok(m) if *s == system && m.errors == 0 => Some(m),
            _ => None,
        })
    }

    /// What the table shows for a system without a valid measurement.
    fn missing(&self, system: System) -> &'static str {
        if self.results.iter().any(|(s, _)| *s == system) {
            "error"
        } else {
            "–"
        }
    }
}

/// The table: calls per second and p50/p99/p999 latency of every system, and ours
/// relative to tarpc and to raw (throughput: higher is better; p99: lower is better).
pub fn markdown_table(cells: &[CellResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| payload | in flight | ours calls/s | tarpc calls/s | raw calls/s \
         | ours/tarpc calls/s | ours/raw calls/s \
         | ours p50/p99/p999 µs | tarpc p50/p99/p999 µs | raw p50/p99/p999 µs \
         | ours/tarpc p99 | ours/raw p99 |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for cell in cells {
        let rate = |s| {
            cell.get(s).map_or_else(
                || cell.missing(s).to_owned(),
                |m| format!("{:.0}", m.calls_per_sec()),
            )
        };
        let latency = |s| {
            cell.get(s).map_or_else(
                || cell.missing(s).to_owned(),
                |m| format!("{} / {} / {}", micros(m.p50), micros(m.p99), micros(m.p999)),
            )
        };
        let ratio =
            |other, f: fn(&Measurement) -> f64| match (cell.get(System::Ours), cell.get(other)) {
                (Some(ours), Some(theirs)) if f(theirs) > 0.0 => {
                    format!("{:.2}", f(ours) / f(theirs))
                }
                _ => "–".to_owned(),
            };
        let p99 = |m: &Measurement| m.p99.as_secs_f64();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            payload_label(cell.payload),
            cell.in_flight,
            rate(System::Ours),
            rate(System::Tarpc),
            rate(System::Raw),
            ratio(System::Tarpc, Measurement::calls_per_sec),
            ratio(System::Raw, Measurement::calls_per_sec),
            latency(System::Ours),
            latency(System::Tarpc),
            latency(System::Raw),
            ratio(System::Tarpc, p99),
            ratio(System::Raw, p99),
        );
    }
    out
}

/// The cost of filter chains, when the chain variants of ours ran: their calls/s and
/// p99 beside plain ours, and the ratios.
pub fn server_chain_table(cells: &[CellResult]) -> Option<String> {
    let variants = [System::OursNoop, System::OursProd];
    if !cells
        .iter()
        .any(|c| variants.iter().any(|v| c.get(*v).is_some()))
    {
        return None;
    }
    let mut out = String::new();
    out.push_str(
        "| payload | in flight | ours calls/s | ours-noop calls/s | ours-prod calls/s \
         | noop/ours calls/s | prod/ours calls/s | ours p99 µs | noop p99 µs | prod p99 µs |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for cell in cells {
        let rate = |s| {
            cell.get(s).map_or_else(
                || cell.missing(s).to_owned(),
                |m| format!("{:.0}", m.calls_per_sec()),
            )
        };
        let p99 = |s| {
            cell.get(s)
                .map_or_else(|| cell.missing(s).to_owned(), |m| micros(m.p99))
        };
        let ratio = |s| match (cell.get(System::Ours), cell.get(s)) {
            (Some(ours), Some(v)) if ours.calls_per_sec() > 0.0 => {
                format!("{:.3}", v.calls_per_sec() / ours.calls_per_sec())
            }
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            payload_label(cell.payload),
            cell.in_flight,
            rate(System::Ours),
            rate(System::OursNoop),
            rate(System::OursProd),
            ratio(System::OursNoop),
            ratio(System::OursProd),
            p99(System::Ours),
            p99(System::OursNoop),
            p99(System::OursProd),
        );
    }
    Some(out)
}

/// Our client's measurements with each client chain, in one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainCell {
    /// Payload size in bytes.
    pub payload: usize,
    /// Calls in flight.
    pub in_flight: usize,
    /// Each chain's measurement, or why it failed.
    pub results: Vec<(ClientChain, Result<Measurement, String>)>,
}

/// The client-chain table: calls per second and latency of ours with each chain, and
/// the ratio to ours with no chain (measured in the same run).
pub fn chain_table(cells: &[ChainCell]) -> String {
    let mut out = String::new();
    out.push_str(
        "| payload | in flight | client chain | calls/s | vs none | p50/p99/p999 µs | p99 vs none |\n",
    );
    out.push_str("|---:|---:|---|---:|---:|---:|---:|\n");
    for cell in cells {
        let valid = |chain| {
            cell.results.iter().find_map(|(c, r)| match r {
                Ok(m) if *c == chain && m.errors == 0 => Some(m),
                _ => None,
            })
        };
        let none = valid(ClientChain::None);
        for (chain, result) in &cell.results {
            let (rate, vs, latency, p99_vs) = match (result, valid(*chain)) {
                (_, Some(m)) => (
                    format!("{:.0}", m.calls_per_sec()),
                    none.map_or_else(
                        || "–".to_owned(),
                        |n| format!("{:.2}", m.calls_per_sec() / n.calls_per_sec()),
                    ),
                    format!("{} / {} / {}", micros(m.p50), micros(m.p99), micros(m.p999)),
                    none.map_or_else(
                        || "–".to_owned(),
                        |n| format!("{:.2}", m.p99.as_secs_f64() / n.p99.as_secs_f64()),
                    ),
                ),
                _ => ("error".into(), "–".into(), "error".into(), "–".into()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {rate} | {vs} | {latency} | {p99_vs} |",
                payload_label(cell.payload),
                cell.in_flight,
                chain.name(),
            );
        }
    }
    out
}

/// What TLS costs (`rpc-bench --tls`): `ours-tls` against `ours` measured in the same
/// run, cell by cell, as calls per second and p99 and their ratios (TLS over
/// plaintext: calls/s below 1 and p99 above 1 are the cost). `None` when no cell has an
/// `ours-tls` result.
pub fn tls_table(cells: &[CellResult]) -> Option<String> {
    if !cells
        .iter()
        .any(|c| c.results.iter().any(|(s, _)| *s == System::OursTls))
    {
        return None;
    }
    let mut out = String::new();
    out.push_str(
        "| payload | in flight | plaintext calls/s | TLS calls/s | TLS/plaintext calls/s \
         | plaintext p99 µs | TLS p99 µs | TLS/plaintext p99 |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for cell in cells {
        let (plain, tls) = (cell.get(System::Ours), cell.get(System::OursTls));
        let rate = |m: Option<&Measurement>, s| {
            m.map_or_else(
                || cell.missing(s).to_owned(),
                |m| format!("{:.0}", m.calls_per_sec()),
            )
        };
        let p99 = |m: Option<&Measurement>, s| {
            m.map_or_else(|| cell.missing(s).to_owned(), |m| micros(m.p99))
        };
        let ratio = |f: fn(&Measurement) -> f64| match (plain, tls) {
            (Some(p), Some(t)) if f(p) > 0.0 => format!("{:.2}", f(t) / f(p)),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            payload_label(cell.payload),
            cell.in_flight,
            rate(plain, System::Ours),
            rate(tls, System::OursTls),
            ratio(Measurement::calls_per_sec),
            p99(plain, System::Ours),
            p99(tls, System::OursTls),
            ratio(|m| m.p99.as_secs_f64()),
        );
    }
    Some(out)
}

/// `16 B`, `1 KiB`, `64 KiB`.
pub(crate) fn payload_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// Microseconds, with one decimal below 100.
pub(crate) fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 100.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(calls: u64, p99_us: u64) -> Measurement {
        Measurement {
            calls,
            seconds: 1.0,
            p50: Duration::from_micros(10),
            p99: Duration::from_micros(p99_us),
            p999: Duration::from_micros(p99_us * 2),
            errors: 0,
            first_error: None,
        }
    }

    #[test]
    fn table_has_ratios_and_marks_missing_systems() {
        let cells = [CellResult {
            payload: 1024,
            in_flight: 32,
            results: vec![
                (System::Ours, Ok(measurement(300, 50))),
                (System::Tarpc, Ok(measurement(100, 200))),
                (System::Raw, Err("boom".to_owned())),
            ],
        }];
        let table = markdown_table(&cells);
        let row = table.lines().nth(2).unwrap();
        assert_eq!(
            row,
            "| 1 KiB | 32 | 300 | 100 | error | 3.00 | – | 10.0 / 50.0 / 100 | 10.0 / 200 / 400 | error | 0.25 | – |"
        );
        assert_eq!(tls_table(&cells), None, "no TLS column without ours-tls");
    }

    #[test]
    fn tls_table_gives_tls_over_plaintext() {
        let cells = [CellResult {
            payload: 16,
            in_flight: 1,
            results: vec![
                (System::Ours, Ok(measurement(400, 50))),
                (System::OursTls, Ok(measurement(300, 100))),
            ],
        }];
        let table = tls_table(&cells).unwrap();
        assert_eq!(
            table.lines().nth(2).unwrap(),
            "| 16 B | 1 | 400 | 300 | 0.75 | 50.0 | 100 | 2.00 |"
        );
    }

    #[test]
    fn chain_table_gives_ratios_to_no_chain() {
        let cells = [ChainCell {
            payload: 16,
            in_flight: 256,
            results: vec![
                (ClientChain::None, Ok(measurement(400, 100))),
                (ClientChain::Breaker, Ok(measurement(300, 150))),
                (ClientChain::Failover, Err("boom".to_owned())),
            ],
        }];
        let table = chain_table(&cells);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows[0],
            "| 16 B | 256 | none | 400 | 1.00 | 10.0 / 100 / 200 | 1.00 |"
        );
        assert_eq!(
            rows[1],
            "| 16 B | 256 | breaker | 300 | 0.75 | 10.0 / 150 / 300 | 1.50 |"
        );
        assert_eq!(rows[2], "| 16 B | 256 | failover | error | – | error | – |");
    }
}
