//! Results: one row per measurement, printed as a table and saved as JSON.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Samples.
    pub count: u64,
    /// The HDR percentile curve: `[percentile, us]` points, evenly spaced
    /// on the "nines" axis (-log10(1 - p)) from 0 % up to the last
    /// percentile the sample count resolves, then the maximum at 100 %.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<[f64; 2]>,
}

impl Latency {
    /// From a histogram of nanoseconds.
    pub fn from_ns(h: &Histogram<u64>) -> Latency {
        let us = |v: u64| v as f64 / 1000.0;
        let mut curve = Vec::new();
        if !h.is_empty() {
            // 20 points per nine, up to the nines the samples resolve (at
            // most 6: 99.9999 %).
            let last = (h.len() as f64).log10().min(6.0);
            let steps = (last * 20.0).floor() as u32;
            for i in 0..=steps {
                let q = 1.0 - 10f64.powf(-(f64::from(i) / 20.0));
                curve.push([q * 100.0, us(h.value_at_quantile(q))]);
            }
            curve.push([100.0, us(h.max())]);
        }
        Latency {
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            count: h.len(),
            curve,
        }
    }
}

/// One window of a time series (the slow-consumer scenario).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// End of the window, in seconds since the measurement started.
    pub t_s: f64,
    /// Median latency of the messages sent in this window, us.
    pub p50_us: Option<f64>,
    /// 99th percentile, us.
    pub p99_us: Option<f64>,
    /// Maximum, us.
    pub max_us: Option<f64>,
    /// Deliveries of the messages sent in this window.
    pub deliveries: u64,
    /// The server's resident memory at the end of the window, MiB.
    pub rss_mib: f64,
}

/// Which plot a row's latency curve goes into: rows with the same `file`
/// share one plot, one line per system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlotKey {
    /// File name without extension.
    pub file: String,
    /// Title above the plot.
    pub title: String,
}

/// One measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// System measured: `confab`, `nats`, `redis`, ...
    pub system: String,
    /// Parameters, human-readable.
    pub params: String,
    /// Achieved rate.
    pub rate: f64,
    /// What the rate counts (`msgs/s`, `deliveries/s`).
    pub unit: String,
    /// Offered rate, for open-loop runs.
    pub offered: Option<f64>,
    /// Latency, where measured.
    pub latency: Option<Latency>,
    /// Free-form notes (RSS, errors).
    pub notes: String,
    /// Other figures of the run by name (`rss_per_conn_kib`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// A time series, for scenarios that report one (`slow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<Point>,
    /// Where the latency curve is plotted, if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plot: Option<PlotKey>,
}

impl Row {
    /// A row with no latency, metrics or series.
    pub fn new(scenario: &str, system: &str, params: String, rate: f64, unit: &str) -> Row {
        Row {
            scenario: scenario.into(),
            system: system.into(),
            params,
            rate,
            unit: unit.into(),
            offered: None,
            latency: None,
            notes: String::new(),
            metrics: BTreeMap::new(),
            series: Vec::new(),
            plot: None,
        }
    }

    /// Sets the plot this row's latency curve goes into.
    pub fn plot_in(&mut self, file: impl Into<String>, title: impl Into<String>) {
        self.plot = Some(PlotKey {
            file: file.into(),
            title: title.into(),
        });
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// Prints rows as an aligned table.
pub fn print_table(rows: &[Row]) {
    println!(
        "{:<11} {:<18} {:<44} {:>10} {:<13} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8}  notes",
        "scenario",
        "system",
        "params",
        "rate",
        "unit",
        "offered",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us"
    );
    for r in rows {
        let (p50, p90, p99, p999, max) = match &r.latency {
            Some(l) => (
                format!("{:.0}", l.p50_us),
                format!("{:.0}", l.p90_us),
                format!("{:.0}", l.p99_us),
                format!("{:.0}", l.p999_us),
                format!("{:.0}", l.max_us),
            ),
            None => Default::default(),
        };
        println!(
            "{:<11} {:<18} {:<44} {:>10} {:<13} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8}  {}",
            r.scenario,
            r.system,
            r.params,
            fmt_rate(r.rate),
            r.unit,
            r.offered.map(fmt_rate).unwrap_or_default(),
            p50,
            p90,
            p99,
            p999,
            max,
            r.notes
        );
    }
}

/// Confab's result divided by a peer's, for one measurement both made.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Scenario name.
    pub scenario: String,
    /// Confab's parameters.
    pub params: String,
    /// The peer system (`nats`, `redis-aof-always`, ...).
    pub peer: String,
    /// The peer's parameters.
    pub peer_params: String,
    /// Confab's rate.
    pub confab_rate: f64,
    /// The peer's rate.
    pub peer_rate: f64,
    /// Confab's rate / the peer's (above 1: Confab is faster).
    pub rate_ratio: f64,
    /// Confab's p99 latency (us), for latency rows.
    pub confab_p99_us: Option<f64>,
    /// The peer's p99 latency (us), for latency rows.
    pub peer_p99_us: Option<f64>,
    /// Confab's p99 / the peer's, for latency rows (below 1: Confab's is lower).
    pub p99_ratio: Option<f64>,
}

/// Ratios for `pairs` of (Confab row, peer row) indices into `rows`;
/// pairs with a failed (zero-rate) side are left out.
pub fn ratios(rows: &[Row], pairs: &[(usize, usize)]) -> Vec<Ratio> {
    pairs
        .iter()
        .filter_map(|&(c, p)| {
            let (c, p) = (rows.get(c)?, rows.get(p)?);
            if c.rate <= 0.0 || p.rate <= 0.0 {
                return None;
            }
            let (cp, pp) = (
                c.latency.as_ref().map(|l| l.p99_us),
                p.latency.as_ref().map(|l| l.p99_us),
            );
            let p99_ratio = match (cp, pp) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            Some(Ratio {
                scenario: c.scenario.clone(),
                params: c.params.clone(),
                peer: p.system.clone(),
                peer_params: p.params.clone(),
                confab_rate: c.rate,
                peer_rate: p.rate,
                rate_ratio: c.rate / p.rate,
                confab_p99_us: cp,
                peer_p99_us: pp,
                p99_ratio,
            })
        })
        .collect()
}

/// Prints the ratios as an aligned table.
pub fn print_ratios(ratios: &[Ratio]) {
    println!("ratios: confab / peer (rate: above 1 = confab faster; p99: below 1 = confab lower)");
    println!(
        "{:<11} {:<44} {:<18} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}",
        "scenario",
        "confab params",
        "peer",
        "confab",
        "peer",
        "rate",
        "confab p99",
        "peer p99",
        "p99"
    );
    for r in ratios {
        let us = |v: Option<f64>| v.map(|v| format!("{v:.0} us")).unwrap_or_default();
        let pr = r.p99_ratio.map(|x| format!("{x:.2}x")).unwrap_or_default();
        let (cp, pp) = (us(r.confab_p99_us), us(r.peer_p99_us));
        println!(
            "{:<11} {:<44} {:<18} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}",
            r.scenario,
            r.params,
            r.peer,
            fmt_rate(r.confab_rate),
            fmt_rate(r.peer_rate),
            format!("{:.2}x", r.rate_ratio),
            cp,
            pp,
            pr
        );
    }
}

/// One row of a before/after comparison.
#[derive(Debug, Clone)]
pub struct Change {
    /// Scenario, system and parameters of the row.
    pub key: String,
    /// What the rate counts.
    pub unit: String,
    /// The rate before, if that run has the row.
    pub before: Option<f64>,
    /// The rate after, if that run has the row.
    pub after: Option<f64>,
    /// p99 latency before and after (us), for latency rows.
    pub p99: (Option<f64>, Option<f64>),
}

/// Pairs the rows of two runs by scenario, system and parameters, in the
/// order of `after` (rows only in `before` last).
pub fn compare(before: &[Row], after: &[Row]) -> Vec<Change> {
    let key = |r: &Row| format!("{} {} {}", r.scenario, r.system, r.params);
    let mut out: Vec<Change> = after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| key(b) == key(a));
            Change {
                key: key(a),
                unit: a.unit.clone(),
                before: b.map(|b| b.rate),
                after: Some(a.rate),
                p99: (
                    b.and_then(|b| b.latency.as_ref().map(|l| l.p99_us)),
                    a.latency.as_ref().map(|l| l.p99_us),
                ),
            }
        })
        .collect();
    for b in before {
        if !after.iter().any(|a| key(a) == key(b)) {
            out.push(Change {
                key: key(b),
                unit: b.unit.clone(),
                before: Some(b.rate),
                after: None,
                p99: (b.latency.as_ref().map(|l| l.p99_us), None),
            });
        }
    }
    out
}

/// Prints a comparison: each row's rate before and after, after / before
/// (for `ms` rows, where lower is better, before / after, so that above 1
/// is always better), and the p99 ratio for latency rows.
pub fn print_comparison(changes: &[Change]) {
    println!(
        "after vs before (speed-up: above 1 = after is better; p99: below 1 = after is lower)"
    );
    println!(
        "{:<78} {:>12} {:>12} {:>9} {:>10} {:>10} {:>8}",
        "row", "before", "after", "speed-up", "p99 before", "p99 after", "p99"
    );
    for c in changes {
        let rate = |v: Option<f64>| {
            v.map(|v| format!("{} {}", fmt_rate(v), c.unit))
                .unwrap_or_else(|| "-".into())
        };
        let speedup = match (c.before, c.after) {
            (Some(b), Some(a)) if a > 0.0 && b > 0.0 => {
                let x = if c.unit == "ms" { b / a } else { a / b };
                format!("{x:.2}x")
            }
            _ => "-".into(),
        };
        let us = |v: Option<f64>| v.map(|v| format!("{v:.0} us")).unwrap_or_default();
        let p99 = match c.p99 {
            (Some(b), Some(a)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => String::new(),
        };
        println!(
            "{:<78} {:>12} {:>12} {:>9} {:>10} {:>10} {:>8}",
            c.key,
            rate(c.before),
            rate(c.after),
            speedup,
            us(c.p99.0),
            us(c.p99.1),
            p99
        );
    }
}

/// A histogram for latencies from 1 ns to 60 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}
