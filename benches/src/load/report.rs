//! From raw load measurements to the table in `BENCHMARKS.md`.
//!
//! `benches/load.sh` writes one tab-separated row per wrk run (see
//! [`COLUMNS`]); this module takes the median of each figure across rounds,
//! per workload and variant, and compares the filters with the two baselines
//! measured in the same run: Envoy without a wasm filter and with an empty one.
//!
//! Proxy CPU per request (Envoy's utime+stime over the run, divided by the
//! requests wrk completed) is the figure to trust on a shared machine:
//! requests per second also move when a neighbour takes the proxy's core,
//! CPU per request much less. The rate limiter and its Redis are measured the
//! same way in every run (idle but for a variant with global limits), since
//! they share the load core and can be what holds its throughput.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The header `load.sh` writes, in order.
pub const COLUMNS: [&str; 13] = [
    "round",
    "workload",
    "variant",
    "mode",
    "requests",
    "duration_us",
    "cpu_ticks",
    "clk_tck",
    "p50_us",
    "p99_us",
    "core0_busy_pct",
    "core1_busy_pct",
    "limiter_cpu_ticks",
];

/// Targets from the issue.
pub const MAX_ADDED_CPU_US: f64 = 50.0;
pub const MAX_COST_VS_EMPTY_FILTER: f64 = 2.0;
pub const MIN_THROUGHPUT_RATIO: f64 = 0.85;

/// How a run loaded the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// As fast as wrk's connections go: throughput and CPU per request.
    Saturation,
    /// Each connection pauses between requests, well below saturation: latency.
    Paced,
}

/// One wrk run against one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub round: u32,
    pub workload: String,
    pub variant: String,
    pub mode: Mode,
    pub requests: u64,
    pub duration_us: u64,
    /// Envoy's utime+stime over the run, in clock ticks (`clk_tck` a second).
    pub cpu_ticks: u64,
    pub clk_tck: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub core0_busy_pct: f64,
    pub core1_busy_pct: f64,
    /// The limiter's and Redis's utime+stime over the run, in clock ticks.
    pub limiter_cpu_ticks: u64,
}

impl Sample {
    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }

    fn cpu_secs(&self) -> f64 {
        self.cpu_ticks as f64 / self.clk_tck.max(1) as f64
    }

    pub fn cpu_us_per_request(&self) -> f64 {
        self.cpu_secs() * 1e6 / self.requests.max(1) as f64
    }

    pub fn limiter_cpu_us_per_request(&self) -> f64 {
        self.limiter_cpu_ticks as f64 / self.clk_tck.max(1) as f64 * 1e6
            / self.requests.max(1) as f64
    }

    /// Envoy's CPU time over the wall time: near 100 % at saturation unless
    /// something else took the proxy's core.
    pub fn proxy_share_pct(&self) -> f64 {
        self.cpu_secs() * 100.0 / (self.duration_us.max(1) as f64 / 1e6)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("results: the header must be the columns {COLUMNS:?}")]
    Header,
    #[error("results line {line}: {problem}")]
    Row { line: usize, problem: String },
    #[error("results: no rows")]
    Empty,
    #[error("results: no {mode:?} run of variant {variant:?} for workload {workload:?}")]
    Missing {
        workload: String,
        variant: String,
        mode: Mode,
    },
}

/// Parses `load.sh`'s results file.
pub fn parse_results(text: &str) -> Result<Vec<Sample>, ReportError> {
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = lines
        .next()
        .map(|(_, line)| line.split('\t').collect())
        .unwrap_or_default();
    if header != COLUMNS {
        return Err(ReportError::Header);
    }
    let mut samples = Vec::new();
    for (index, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let row = |problem: String| ReportError::Row {
            line: index + 1,
            problem,
        };
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != COLUMNS.len() {
            return Err(row(format!(
                "{} fields, expected {}",
                fields.len(),
                COLUMNS.len()
            )));
        }
        let int = |i: usize| {
            fields[i]
                .parse::<u64>()
                .map_err(|_| row(format!("{} {:?} is not an integer", COLUMNS[i], fields[i])))
        };
        let real = |i: usize| {
            fields[i]
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| row(format!("{} {:?} is not a number", COLUMNS[i], fields[i])))
        };
        let mode = match fields[3] {
            "saturation" => Mode::Saturation,
            "paced" => Mode::Paced,
            other => return Err(row(format!("mode {other:?}: saturation or paced"))),
        };
        let sample = Sample {
            round: u32::try_from(int(0)?).map_err(|_| row("round too large".into()))?,
            workload: fields[1].to_owned(),
            variant: fields[2].to_owned(),
            mode,
            requests: int(4)?,
            duration_us: int(5)?,
            cpu_ticks: int(6)?,
            clk_tck: int(7)?,
            p50_us: real(8)?,
            p99_us: real(9)?,
            core0_busy_pct: real(10)?,
            core1_busy_pct: real(11)?,
            limiter_cpu_ticks: int(12)?,
        };
        if sample.requests == 0 {
            return Err(row("no request completed".into()));
        }
        samples.push(sample);
    }
    if samples.is_empty() {
        return Err(ReportError::Empty);
    }
    Ok(samples)
}

/// The median; the mean of the middle two for an even count; NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Which variant plays which part in the comparison.
#[derive(Debug, Clone)]
pub struct Roles {
    /// Envoy without a wasm filter.
    pub baseline: String,
    /// Envoy with the empty wasm filter.
    pub empty: String,
    /// Our filter, one variant per build; the first is the shipped build, the
    /// others are compared with it round by round.
    pub filters: Vec<String>,
    /// Row labels, by variant name.
    pub labels: BTreeMap<String, String>,
}

impl Roles {
    fn label<'a>(&'a self, variant: &'a str) -> &'a str {
        self.labels.get(variant).map_or(variant, String::as_str)
    }

    fn variants(&self) -> Vec<&str> {
        [self.baseline.as_str(), self.empty.as_str()]
            .into_iter()
            .chain(self.filters.iter().map(String::as_str))
            .collect()
    }
}

/// Medians across rounds of one variant's runs in one workload and mode.
#[derive(Debug, Clone, Copy)]
pub struct Medians {
    pub rounds: usize,
    pub requests_per_sec: f64,
    pub cpu_us_per_request: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub proxy_share_pct: f64,
    pub core0_busy_pct: f64,
    pub core1_busy_pct: f64,
    pub limiter_cpu_us_per_request: f64,
}

impl Medians {
    pub fn bottleneck(&self) -> Bottleneck {
        Bottleneck::of(self.proxy_share_pct, self.core1_busy_pct)
    }
}

/// What held a saturation run's throughput.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bottleneck {
    /// Envoy had its core.
    Proxy,
    /// Core 1 (wrk, the upstream, and the limiter with Redis for a variant
    /// with global limits) filled up first.
    LoadSide,
    /// Envoy idled and so did core 1: a neighbour process took core 0.
    Neighbour,
}

impl Bottleneck {
    pub fn of(proxy_share_pct: f64, core1_busy_pct: f64) -> Self {
        if proxy_share_pct >= DISTURBED_SHARE_PCT {
            Self::Proxy
        } else if core1_busy_pct >= LOAD_SIDE_BUSY_PCT {
            Self::LoadSide
        } else {
            Self::Neighbour
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::LoadSide => "load side",
            Self::Neighbour => "neighbour on core 0",
        }
    }
}

/// Core 1 this busy while Envoy idles: the load side is the bottleneck.
pub const LOAD_SIDE_BUSY_PCT: f64 = 90.0;

fn runs<'a>(
    samples: &'a [Sample],
    workload: &'a str,
    variant: &'a str,
    mode: Mode,
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples
        .iter()
        .filter(move |s| s.workload == workload && s.variant == variant && s.mode == mode)
}

fn medians(
    samples: &[Sample],
    workload: &str,
    variant: &str,
    mode: Mode,
) -> Result<Medians, ReportError> {
    let selected: Vec<&Sample> = runs(samples, workload, variant, mode).collect();
    if selected.is_empty() {
        return Err(ReportError::Missing {
            workload: workload.to_owned(),
            variant: variant.to_owned(),
            mode,
        });
    }
    let of = |figure: fn(&Sample) -> f64| {
        median(&selected.iter().map(|s| figure(s)).collect::<Vec<_>>())
    };
    Ok(Medians {
        rounds: selected.len(),
        requests_per_sec: of(Sample::requests_per_sec),
        cpu_us_per_request: of(Sample::cpu_us_per_request),
        p50_us: of(|s| s.p50_us),
        p99_us: of(|s| s.p99_us),
        proxy_share_pct: of(Sample::proxy_share_pct),
        core0_busy_pct: of(|s| s.core0_busy_pct),
        core1_busy_pct: of(|s| s.core1_busy_pct),
        limiter_cpu_us_per_request: of(Sample::limiter_cpu_us_per_request),
    })
}

/// Our filter against the baselines in one workload (medians across rounds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterCost {
    /// Proxy CPU µs per request over Envoy without a filter.
    pub added_over_none_us: f64,
    /// … over Envoy with the empty wasm filter.
    pub added_over_empty_us: f64,
    /// (ours − none) / (empty − none): our cost in units of "having a wasm filter".
    pub vs_empty_filter: f64,
    /// Requests per second, ours / none.
    pub throughput_ratio: f64,
}

impl FilterCost {
    pub fn new(none: &Medians, empty: &Medians, ours: &Medians) -> Self {
        let added = ours.cpu_us_per_request - none.cpu_us_per_request;
        Self {
            added_over_none_us: added,
            added_over_empty_us: ours.cpu_us_per_request - empty.cpu_us_per_request,
            vs_empty_filter: added / (empty.cpu_us_per_request - none.cpu_us_per_request),
            throughput_ratio: ours.requests_per_sec / none.requests_per_sec,
        }
    }

    /// Which of the targets this misses (empty: all met).
    pub fn missed_targets(&self) -> Vec<String> {
        let mut missed = Vec::new();
        if self.added_over_none_us > MAX_ADDED_CPU_US {
            missed.push(format!("added CPU > {MAX_ADDED_CPU_US} µs"));
        }
        // A negative or undefined ratio means the empty filter measured no
        // dearer than none: noise swamped it, and the ratio says nothing.
        if self.vs_empty_filter.is_finite()
            && self.vs_empty_filter > 0.0
            && self.vs_empty_filter > MAX_COST_VS_EMPTY_FILTER
        {
            missed.push(format!(
                "> {MAX_COST_VS_EMPTY_FILTER}× the empty filter's cost"
            ));
        }
        if self.throughput_ratio < MIN_THROUGHPUT_RATIO {
            missed.push(format!("throughput < {MIN_THROUGHPUT_RATIO}× no filter"));
        }
        missed
    }
}

/// How the run was made, for the table headings.
#[derive(Debug, Clone)]
pub struct RunShape {
    pub saturation: String,
    pub paced: String,
}

fn workloads(samples: &[Sample]) -> Vec<&str> {
    let mut seen: Vec<&str> = Vec::new();
    for sample in samples {
        if !seen.contains(&sample.workload.as_str()) {
            seen.push(&sample.workload);
        }
    }
    seen
}

fn rounds(samples: &[Sample]) -> Vec<u32> {
    let mut rounds: Vec<u32> = samples.iter().map(|s| s.round).collect();
    rounds.sort_unstable();
    rounds.dedup();
    rounds
}

/// Saturation runs in which Envoy got less than this share of its core were
/// disturbed by a neighbour (or the load side could not keep up).
pub const DISTURBED_SHARE_PCT: f64 = 85.0;

/// The Markdown report: medians, costs and targets, the opt-level comparison,
/// and every round's CPU per request so a disturbed round shows.
pub fn render(samples: &[Sample], roles: &Roles, shape: &RunShape) -> Result<String, ReportError> {
    let mut out = String::new();
    let workloads = workloads(samples);
    let rounds = rounds(samples);
    let variants = roles.variants();
    let mut table: BTreeMap<(&str, &str, Mode), Medians> = BTreeMap::new();
    for &workload in &workloads {
        for &variant in &variants {
            for mode in [Mode::Saturation, Mode::Paced] {
                table.insert(
                    (workload, variant, mode),
                    medians(samples, workload, variant, mode)?,
                );
            }
        }
    }
    let get = |workload, variant, mode| table[&(workload, variant, mode)];

    let _ = writeln!(
        out,
        "Medians of {} rounds; variants interleaved within each round.\n",
        rounds.len()
    );
    let _ = writeln!(out, "**Saturation** ({})\n", shape.saturation);
    let _ = writeln!(
        out,
        "| workload | variant | req/s | proxy CPU µs/req | Envoy's share of core 0 | core 0 busy | core 1 busy | limiter + Redis CPU µs/req | limited by |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    for &workload in &workloads {
        for &variant in &variants {
            let m = get(workload, variant, Mode::Saturation);
            let _ = writeln!(
                out,
                "| {workload} | {} | {:.0} | {:.1} | {:.0} % | {:.0} % | {:.0} % | {:.1} | {} |",
                roles.label(variant),
                m.requests_per_sec,
                m.cpu_us_per_request,
                m.proxy_share_pct,
                m.core0_busy_pct,
                m.core1_busy_pct,
                m.limiter_cpu_us_per_request,
                m.bottleneck().describe()
            );
        }
    }

    let _ = writeln!(out, "\n**Fixed rate** ({})\n", shape.paced);
    let _ = writeln!(
        out,
        "| workload | variant | req/s | p50 ms | p99 ms | proxy CPU µs/req | core 1 busy | limiter + Redis CPU µs/req |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
    for &workload in &workloads {
        for &variant in &variants {
            let m = get(workload, variant, Mode::Paced);
            let _ = writeln!(
                out,
                "| {workload} | {} | {:.0} | {:.3} | {:.3} | {:.1} | {:.0} % | {:.1} |",
                roles.label(variant),
                m.requests_per_sec,
                m.p50_us / 1000.0,
                m.p99_us / 1000.0,
                m.cpu_us_per_request,
                m.core1_busy_pct,
                m.limiter_cpu_us_per_request
            );
        }
    }

    let _ = writeln!(
        out,
        "\n**Cost of the filter** (saturation; targets: ≤ {MAX_ADDED_CPU_US} µs CPU/request over no filter, \
         ≤ {MAX_COST_VS_EMPTY_FILTER}× the empty filter's cost, ≥ {MIN_THROUGHPUT_RATIO}× the no-filter throughput)\n"
    );
    let _ = writeln!(
        out,
        "| workload | filter | empty − none µs | ours − none µs | ours − empty µs | (ours − none)/(empty − none) | req/s ours/none | req/s empty/none | ours − none µs at the fixed rate | targets |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for &workload in &workloads {
        let none = get(workload, &roles.baseline, Mode::Saturation);
        let empty = get(workload, &roles.empty, Mode::Saturation);
        let none_paced = get(workload, &roles.baseline, Mode::Paced);
        for filter in &roles.filters {
            let ours = get(workload, filter, Mode::Saturation);
            let ours_paced = get(workload, filter, Mode::Paced);
            let cost = FilterCost::new(&none, &empty, &ours);
            let missed = cost.missed_targets();
            let verdict = if missed.is_empty() {
                "met".to_owned()
            } else {
                format!("missed: {}", missed.join("; "))
            };
            let _ = writeln!(
                out,
                "| {workload} | {} | {:+.1} | {:+.1} | {:+.1} | {:.2} | {:.2} | {:.2} | {:+.1} | {verdict} |",
                roles.label(filter),
                empty.cpu_us_per_request - none.cpu_us_per_request,
                cost.added_over_none_us,
                cost.added_over_empty_us,
                cost.vs_empty_filter,
                cost.throughput_ratio,
                empty.requests_per_sec / none.requests_per_sec,
                ours_paced.cpu_us_per_request - none_paced.cpu_us_per_request,
            );
        }
    }

    if let Some((shipped, others)) = roles.filters.split_first() {
        for other in others {
            let _ = writeln!(
                out,
                "\n**{} vs {}**, paired by round (CPU and req/s at saturation, latency at the fixed rate; \
                 negative: {} cheaper or faster)\n",
                roles.label(other),
                roles.label(shipped),
                roles.label(other)
            );
            let _ = writeln!(
                out,
                "| workload | CPU µs/req difference per round | median | req/s ratio per round | median | p50 ms difference (median) | p99 ms difference (median) |"
            );
            let _ = writeln!(out, "|---|---|---:|---|---:|---:|---:|");
            for &workload in &workloads {
                let pair = |mode, figure| paired(samples, workload, shipped, other, mode, figure);
                let cpu = pair(Mode::Saturation, |a, b| {
                    b.cpu_us_per_request() - a.cpu_us_per_request()
                });
                let rps = pair(Mode::Saturation, |a, b| {
                    b.requests_per_sec() / a.requests_per_sec()
                });
                let p50 = pair(Mode::Paced, |a, b| (b.p50_us - a.p50_us) / 1000.0);
                let p99 = pair(Mode::Paced, |a, b| (b.p99_us - a.p99_us) / 1000.0);
                let list = |values: &[f64], fmt: fn(f64) -> String| {
                    values
                        .iter()
                        .map(|v| fmt(*v))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let _ = writeln!(
                    out,
                    "| {workload} | {} | {:+.1} | {} | {:.3} | {:+.3} | {:+.3} |",
                    list(&cpu, |v| format!("{v:+.1}")),
                    median(&cpu),
                    list(&rps, |v| format!("{v:.3}")),
                    median(&rps),
                    median(&p50),
                    median(&p99)
                );
            }
        }
    }

    let _ = writeln!(
        out,
        "\n**Every round** (saturation: proxy CPU µs/req, Envoy's share of core 0 in brackets; \
         a share under {DISTURBED_SHARE_PCT:.0} % marks a disturbed run)\n"
    );
    let _ = write!(out, "| workload | round |");
    for &variant in &variants {
        let _ = write!(out, " {} |", roles.label(variant));
    }
    let _ = write!(out, "\n|---|---:|");
    for _ in &variants {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out);
    let (mut disturbed, mut load_side) = (0, 0);
    for &workload in &workloads {
        for &round in &rounds {
            let _ = write!(out, "| {workload} | {round} |");
            for &variant in &variants {
                match runs(samples, workload, variant, Mode::Saturation).find(|s| s.round == round)
                {
                    Some(s) => {
                        let flag = match Bottleneck::of(s.proxy_share_pct(), s.core1_busy_pct) {
                            Bottleneck::Proxy => "",
                            Bottleneck::LoadSide => {
                                load_side += 1;
                                " †"
                            }
                            Bottleneck::Neighbour => {
                                disturbed += 1;
                                " ⚠"
                            }
                        };
                        let _ = write!(
                            out,
                            " {:.1} ({:.0} %){flag} |",
                            s.cpu_us_per_request(),
                            s.proxy_share_pct()
                        );
                    }
                    None => {
                        let _ = write!(out, " – |");
                    }
                }
            }
            let _ = writeln!(out);
        }
    }
    if disturbed > 0 {
        let _ = writeln!(
            out,
            "\n⚠ {disturbed} saturation run(s) gave Envoy under {DISTURBED_SHARE_PCT:.0} % of its core: \
             their req/s understate the proxy; CPU per request is still comparable."
        );
    }
    if load_side > 0 {
        let _ = writeln!(
            out,
            "\n† {load_side} saturation run(s) filled core 1 (the load side) before Envoy its core: \
             their req/s are the load side's; Envoy, not saturated, spends more CPU per request."
        );
    }
    Ok(out)
}

/// Per round that has both runs in `mode`: `figure(shipped's, other's)`.
fn paired(
    samples: &[Sample],
    workload: &str,
    shipped: &str,
    other: &str,
    mode: Mode,
    figure: fn(&Sample, &Sample) -> f64,
) -> Vec<f64> {
    runs(samples, workload, shipped, mode)
        .filter_map(|a| {
            runs(samples, workload, other, mode)
                .find(|b| b.round == a.round)
                .map(|b| figure(a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        round: u32,
        workload: &str,
        variant: &str,
        mode: &str,
        requests: u64,
        ticks: u64,
    ) -> String {
        format!("{round}\t{workload}\t{variant}\t{mode}\t{requests}\t5000000\t{ticks}\t100\t400.5\t900\t99.5\t80\t0\n")
    }

    fn results(rows: &[String]) -> String {
        COLUMNS.join("\t") + "\n" + &rows.concat()
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn figures_per_sample() {
        let samples = parse_results(&results(&[row(
            1,
            "plain",
            "none",
            "saturation",
            25_000,
            400,
        )]))
        .unwrap();
        let s = &samples[0];
        assert_eq!(s.requests_per_sec(), 5000.0);
        // 4 s of CPU over 25,000 requests.
        assert!((s.cpu_us_per_request() - 160.0).abs() < 1e-9);
        assert!((s.proxy_share_pct() - 80.0).abs() < 1e-9);
    }

    #[test]
    fn malformed_results_are_named() {
        assert_eq!(parse_results("round\tworkload\n"), Err(ReportError::Header));
        assert_eq!(parse_results(&results(&[])), Err(ReportError::Empty));
        let bad = results(&[row(1, "plain", "none", "fast", 1, 1)]);
        assert!(matches!(
            parse_results(&bad),
            Err(ReportError::Row { line: 2, .. })
        ));
        let zero = results(&[row(1, "plain", "none", "paced", 0, 1)]);
        assert!(matches!(parse_results(&zero), Err(ReportError::Row { .. })));
    }

    #[test]
    fn filter_cost_and_targets() {
        let m = |rps: f64, cpu: f64| Medians {
            rounds: 3,
            requests_per_sec: rps,
            cpu_us_per_request: cpu,
            p50_us: 0.0,
            p99_us: 0.0,
            proxy_share_pct: 100.0,
            core0_busy_pct: 100.0,
            core1_busy_pct: 50.0,
            limiter_cpu_us_per_request: 0.0,
        };
        let (none, empty) = (m(6400.0, 156.0), m(5500.0, 182.0));
        let cost = FilterCost::new(&none, &empty, &m(4200.0, 238.0));
        assert_eq!(cost.added_over_none_us, 82.0);
        assert_eq!(cost.added_over_empty_us, 56.0);
        assert!((cost.vs_empty_filter - 82.0 / 26.0).abs() < 1e-12);
        assert_eq!(cost.missed_targets().len(), 3);
        let good = FilterCost::new(&none, &empty, &m(5800.0, 190.0));
        assert!(
            good.missed_targets().is_empty(),
            "{:?}",
            good.missed_targets()
        );
    }

    #[test]
    fn the_report_has_every_variant_and_the_paired_comparison() {
        let mut rows = Vec::new();
        for round in 1..=3 {
            for (variant, ticks) in [("none", 390), ("noop", 455), ("maas", 500), ("maas-s", 510)] {
                for mode in ["saturation", "paced"] {
                    rows.push(row(
                        round,
                        "plain",
                        variant,
                        mode,
                        25_000,
                        ticks + u64::from(round),
                    ));
                }
            }
            // Held by core 1 (a 70 % share, core 1 95 % busy, 240 µs of
            // limiter CPU a request), 1.2 ms slower.
            rows.push(
                row(round, "plain", "maas-global", "saturation", 20_000, 350)
                    .replace("\t80\t0\n", "\t95\t480\n"),
            );
            rows.push(
                row(round, "plain", "maas-global", "paced", 20_000, 300)
                    .replace("\t400.5\t900\t", "\t1600.5\t3100\t"),
            );
        }
        let samples = parse_results(&results(&rows)).unwrap();
        let roles = Roles {
            baseline: "none".into(),
            empty: "noop".into(),
            filters: vec!["maas".into(), "maas-s".into(), "maas-global".into()],
            labels: [("maas".to_owned(), "ours".to_owned())]
                .into_iter()
                .collect(),
        };
        let shape = RunShape {
            saturation: "sat".into(),
            paced: "paced".into(),
        };
        let text = render(&samples, &roles, &shape).unwrap();
        assert!(
            text.contains("| plain | ours | 5000 | 200.8 | 100 % | 100 % | 80 % | 0.0 | proxy |"),
            "{text}"
        );
        assert!(
            text.contains("| plain | ours | 5000 | 0.401 | 0.900 | 200.8 | 80 % | 0.0 |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| plain | ours | +26.0 | +44.0 | +18.0 | 1.69 | 1.00 | 1.00 | +44.0 | met |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| plain | +4.0, +4.0, +4.0 | +4.0 | 1.000, 1.000, 1.000 | 1.000 | +0.000 | +0.000 |"),
            "{text}"
        );
        // maas-global against the shipped build: 175 µs vs 200.4–201.2 µs,
        // 4000 vs 5000 req/s, +1.2 ms p50 and +2.2 ms p99 at the fixed rate.
        assert!(
            text.contains("| plain | -25.4, -25.8, -26.2 | -25.8 | 0.800, 0.800, 0.800 | 0.800 | +1.200 | +2.200 |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| plain | maas-global | 4000 | 175.0 | 70 % | 100 % | 95 % | 240.0 | load side |"
            ),
            "{text}"
        );
        assert!(
            text.contains("⚠") && text.contains("⚠ 3 saturation run(s)"),
            "the 78 % share of `none` is flagged: {text}"
        );
        assert!(
            text.contains(" 175.0 (70 %) † |") && text.contains("† 3 saturation run(s)"),
            "maas-global's runs are marked as held by core 1: {text}"
        );
        let missing = Roles {
            empty: "absent".into(),
            ..roles
        };
        assert!(matches!(
            render(&samples, &missing, &shape),
            Err(ReportError::Missing { .. })
        ));
    }
}
