//! The four ledgers of a soak run, compared:
//!
//! - the clients' own record of each request (status, the usage the
//!   response reported, the content events read before a cut);
//! - the audit log: one JSON line per request from the filter (identity,
//!   status, outcome, tokens charged, usage source);
//! - the filter's metrics (`maas_*_tokens_total`, `maas_requests_total`
//!   from Envoy's `/stats/prometheus`; Envoy is never restarted);
//! - the inference server's own counters (`inference_prompt_tokens_total`,
//!   `inference_generated_tokens_total`), summed over its lifetimes (scraped
//!   before each kill: a restart starts them from zero);
//! - the limiter's counters in Redis (read before each Redis kill and at the
//!   end: a Redis restart loses them, persistence being off, so each Redis
//!   lifetime is its own window of the global limits).
//!
//! Each client drives one key sequentially, so its requests and that key's
//! audit lines pair up in time order: a request's line starts between its
//! send and its answer.
//!
//! Targets: no window of any limit charged past it (from the audit log: every
//! admitted request's final charge in the window it was admitted in); no served
//! request without a charge, or charged less than the server computed for
//! it (lost); no request charged twice (doubled). A complete response that
//! reported usage must be charged exactly that; a cut stream at least the
//! prompt the server computed plus the events the client read.

use std::collections::BTreeMap;

use serde_json::Value;

use super::client::{Sent, Tokens};
use super::plan::{Component, Plan, Quantity, RatePlan, Source};
use super::redis_counters::subscription_counter;

/// A request's audit line start may lead the client's clock reading by this
/// much (milliseconds are truncated on both sides).
const SKEW_MS: u64 = 5;

/// The audit record fields the soak reads (`filter/src/audit.rs`).
#[derive(Debug, Clone)]
pub struct AuditLine {
    pub start_ms: u64,
    /// When the filter checked its limits (older filters: its start).
    pub admitted_ms: u64,
    pub key_id: Option<String>,
    pub subscription: Option<String>,
    pub status: Option<u32>,
    pub outcome: String,
    pub error_code: Option<String>,
    pub reserved_tokens: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub usage: Option<String>,
    pub latency_ms: u64,
}

impl AuditLine {
    /// One line of the access log; `Err` names what is missing.
    pub fn parse(line: &str) -> Result<AuditLine, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
        let number = |name: &str| {
            v[name]
                .as_u64()
                .ok_or_else(|| format!("no number {name:?} in {line}"))
        };
        let text = |name: &str| v[name].as_str().map(str::to_string);
        let start_ms = number("start_ms")?;
        Ok(AuditLine {
            start_ms,
            admitted_ms: v["admitted_ms"].as_u64().unwrap_or(start_ms),
            key_id: text("key_id"),
            subscription: text("subscription"),
            status: v["status"].as_u64().and_then(|s| u32::try_from(s).ok()),
            outcome: text("outcome").ok_or_else(|| format!("no outcome in {line}"))?,
            error_code: text("error_code"),
            reserved_tokens: number("reserved_tokens")?,
            prompt_tokens: number("prompt_tokens")?,
            completion_tokens: number("completion_tokens")?,
            total_tokens: number("total_tokens")?,
            usage: text("usage"),
            latency_ms: number("latency_ms")?,
        })
    }

    /// Let through to the model (whatever then happened).
    pub fn admitted(&self) -> bool {
        matches!(
            self.outcome.as_str(),
            "ok" | "incomplete" | "upstream_error"
        )
    }

    fn tokens(&self) -> Tokens {
        Tokens {
            prompt: self.prompt_tokens,
            completion: self.completion_tokens,
        }
    }

    fn end_ms(&self) -> u64 {
        self.start_ms + self.latency_ms
    }
}

/// A process killed and brought back.
#[derive(Debug, Clone, Copy)]
pub struct FaultRecord {
    pub component: Component,
    pub killed_ms: u64,
    /// When it answered again.
    pub back_ms: u64,
}

/// Redis's counters as read at `taken_ms`, in Redis lifetime `lifetime`.
#[derive(Debug, Clone)]
pub struct RedisSnapshot {
    pub lifetime: usize,
    pub taken_ms: u64,
    pub counters: Vec<(String, i64)>,
}

/// Everything a run produced.
pub struct Run<'a> {
    pub plan: &'a Plan,
    /// Each client's key id (as the audit log names it).
    pub key_ids: Vec<String>,
    pub sent: Vec<Sent>,
    pub audit: Vec<AuditLine>,
    pub faults: Vec<FaultRecord>,
    /// The inference server's counters per lifetime (what it counted from
    /// its start, or the run's start, to its kill or the end).
    pub server: Vec<Tokens>,
    pub redis: Vec<RedisSnapshot>,
    /// Envoy's `/stats/prometheus` at the end.
    pub filter_metrics: String,
}

/// One row of the limiter comparison.
#[derive(Debug, Clone)]
pub struct LimiterRow {
    pub lifetime: usize,
    pub subscription: String,
    pub redis_tokens: Option<i64>,
    /// Charges of the subscription's requests that ended in that Redis
    /// lifetime, before the snapshot.
    pub audit_tokens: u64,
    /// Of those, requests that ended while the limiter or Redis was down
    /// (their commit could not land).
    pub ended_while_down: u64,
    pub ended_while_down_tokens: u64,
}

/// What happened while one fault lasted.
#[derive(Debug, Clone)]
pub struct FaultRow {
    pub fault: FaultRecord,
    /// (subscription, status or "no answer") → requests started while it was down.
    pub answers: BTreeMap<(String, String), u64>,
}

/// The comparison's result.
#[derive(Debug, Default)]
pub struct Findings {
    pub sent_by_kind: BTreeMap<&'static str, u64>,
    pub sent: u64,
    pub served: u64,
    pub cut: u64,
    /// "429 tokens/rate_limit_exceeded" → count, for every non-2xx answer.
    pub refused: BTreeMap<String, u64>,
    pub transport_errors: u64,
    pub audit_lines: u64,
    pub windows_checked: u64,
    pub over_limit: Vec<String>,
    pub lost: Vec<String>,
    pub doubled: Vec<String>,
    /// A complete response charged other than the usage it reported.
    pub mischarged: Vec<String>,
    /// Requests not served (non-2xx) but charged, that started while the
    /// inference server was down: no model ever saw them.
    pub charged_never_reached: u64,
    pub charged_never_reached_tokens: u64,
    /// The other unserved requests charged (in flight when the server was
    /// killed, or answered an error by it).
    pub charged_unserved_other: u64,
    pub charged_unserved_other_tokens: u64,
    /// Requests a down limiter or Redis should have refused.
    pub fail_open: Vec<String>,
    pub metric_mismatches: Vec<String>,
    pub audit_tokens: Tokens,
    pub server_tokens: Tokens,
    /// Prompt tokens per prompt, from complete responses.
    pub prompt_tokens: BTreeMap<usize, u64>,
    /// Worst single over-count: complete requests (audit − reported), cut
    /// streams (audit − (prompt + content events read): an upper bound,
    /// the server may have generated more after the cut).
    pub worst_complete_overcount: i64,
    pub worst_cut_overcount: u64,
    pub worst_cut_detail: String,
    pub cut_overcount_total: u64,
    /// Cut streams charged less than prompt + `max_tokens`: the server may
    /// have computed more than that charge (it stops at the cut only when it
    /// notices).
    pub cut_possibly_under: u64,
    pub limiter: Vec<LimiterRow>,
    pub faults: Vec<FaultRow>,
}

impl Findings {
    /// The targets missed, each with why; empty when all are met.
    pub fn missed_targets(&self) -> Vec<String> {
        let mut missed = Vec::new();
        let mut list = |what: &str, items: &[String]| {
            if !items.is_empty() {
                missed.push(format!("{} {what}:", items.len()));
                missed.extend(items.iter().take(10).map(|i| format!("  {i}")));
            }
        };
        list("windows charged past their limit", &self.over_limit);
        list("lost charges", &self.lost);
        list("doubled charges", &self.doubled);
        list(
            "complete responses charged other than their usage",
            &self.mischarged,
        );
        list(
            "requests admitted while their limiter was down",
            &self.fail_open,
        );
        list("audit/metrics mismatches", &self.metric_mismatches);
        if self.audit_tokens.total() < self.server_tokens.total() {
            missed.push(format!(
                "the audit log charged {} tokens, the inference server computed {}",
                self.audit_tokens.total(),
                self.server_tokens.total()
            ));
        }
        missed
    }
}

/// Compares the ledgers of `run`.
pub fn compare(run: &Run<'_>) -> Findings {
    let mut f = Findings {
        sent: run.sent.len() as u64,
        audit_lines: run.audit.len() as u64,
        ..Findings::default()
    };
    for s in &run.sent {
        *f.sent_by_kind.entry(s.kind.label()).or_default() += 1;
        f.served += u64::from(s.served());
        f.cut += u64::from(s.cut);
        f.transport_errors += u64::from(s.status.is_none());
        if let Some(status) = s.status.filter(|_| !s.served()) {
            let error = s.error.as_deref().unwrap_or("-");
            *f.refused.entry(format!("{status} {error}")).or_default() += 1;
        }
        if let (Some(usage), false) = (s.usage, s.cut) {
            f.prompt_tokens.entry(s.prompt).or_insert(usage.prompt);
        }
    }
    for line in &run.audit {
        f.audit_tokens.prompt += line.prompt_tokens;
        f.audit_tokens.completion += line.completion_tokens;
    }
    for t in &run.server {
        f.server_tokens.prompt += t.prompt;
        f.server_tokens.completion += t.completion;
    }
    pair_requests(run, &mut f);
    check_windows(run, &mut f);
    check_metrics(run, &mut f);
    check_faults(run, &mut f);
    compare_limiter(run, &mut f);
    f
}

/// Pairs each client's requests with its key's audit lines and checks each
/// request's charge.
fn pair_requests(run: &Run<'_>, f: &mut Findings) {
    for (client, key_id) in run.key_ids.iter().enumerate() {
        let mut lines: Vec<&AuditLine> = run
            .audit
            .iter()
            .filter(|l| l.key_id.as_deref() == Some(key_id))
            .collect();
        lines.sort_by_key(|l| l.start_ms);
        let mut lines = lines.into_iter().peekable();
        for s in run.sent.iter().filter(|s| s.client == client) {
            // Lines that started before this request was sent belong to no
            // request of this client: a charge nobody asked for.
            while let Some(stray) = lines.next_if(|l| l.start_ms + SKEW_MS < s.sent_ms) {
                f.doubled.push(format!(
                    "key {key_id}: an audit line at {} ms ({} tokens) matches no request",
                    stray.start_ms, stray.total_tokens
                ));
            }
            let line = lines.next_if(|l| l.start_ms <= s.sent_ms + s.elapsed_ms + SKEW_MS);
            check_request(run, f, key_id, s, line);
        }
        for stray in lines {
            f.doubled.push(format!(
                "key {key_id}: an audit line at {} ms ({} tokens) matches no request",
                stray.start_ms, stray.total_tokens
            ));
        }
    }
}

fn check_request(
    run: &Run<'_>,
    f: &mut Findings,
    key_id: &str,
    s: &Sent,
    line: Option<&AuditLine>,
) {
    let what = || {
        format!(
            "key {key_id}, {} sent at {} ms (status {:?})",
            s.kind.label(),
            s.sent_ms,
            s.status
        )
    };
    let Some(line) = line else {
        if s.served() {
            f.lost.push(format!("{}: served, no audit line", what()));
        }
        return;
    };
    if let Some(status) = s.status {
        // A cut stream's line may say 200 or (Envoy's view of a reset) 0.
        if !s.cut && line.status != Some(u32::from(status)) {
            f.mischarged.push(format!(
                "{}: the audit line says status {:?}",
                what(),
                line.status
            ));
        }
    }
    let charged = line.total_tokens;
    if charged != line.prompt_tokens + line.completion_tokens {
        f.mischarged.push(format!(
            "{}: total {charged} is not prompt + completion",
            what()
        ));
    }
    if !s.served() {
        if charged > 0 {
            let never_reached = run.faults.iter().any(|x| {
                x.component == Component::InferenceServer
                    && x.killed_ms <= line.start_ms
                    && line.start_ms < x.back_ms
            });
            if never_reached {
                f.charged_never_reached += 1;
                f.charged_never_reached_tokens += charged;
            } else {
                f.charged_unserved_other += 1;
                f.charged_unserved_other_tokens += charged;
            }
        }
        return;
    }
    if charged == 0 {
        f.lost.push(format!("{}: served, charged 0", what()));
        return;
    }
    match (s.usage, s.cut) {
        (Some(usage), false) => {
            let over = charged as i64 - usage.total() as i64;
            f.worst_complete_overcount = f.worst_complete_overcount.max(over);
            if line.tokens() == usage {
                return;
            }
            let detail = format!(
                "{}: reported {usage:?}, charged {:?} ({:?})",
                what(),
                line.tokens(),
                line.usage
            );
            if charged < usage.total() {
                f.lost.push(detail);
            } else if charged == 2 * usage.total() {
                f.doubled.push(detail);
            } else {
                f.mischarged.push(detail);
            }
        }
        _ => {
            // What the server surely computed: the whole prompt and each
            // token the client read.
            let prompt = f.prompt_tokens.get(&s.prompt).copied().unwrap_or(0);
            let floor = prompt + s.content_events;
            if charged < floor {
                f.lost.push(format!(
                    "{}: charged {charged}, the server computed at least {floor}",
                    what()
                ));
                return;
            }
            let over = charged - floor;
            f.cut_overcount_total += over;
            if charged < prompt + run.plan.traffic.max_tokens {
                f.cut_possibly_under += 1;
            }
            if over > f.worst_cut_overcount {
                f.worst_cut_overcount = over;
                f.worst_cut_detail = format!(
                    "charged {charged} ({} prompt + {} completion, {:?}; reserved {}) for a \
                     {}-token prompt and {} content events read",
                    line.prompt_tokens,
                    line.completion_tokens,
                    line.usage.as_deref().unwrap_or("-"),
                    line.reserved_tokens,
                    prompt,
                    s.content_events
                );
            }
        }
    }
}

/// Which window of `rate` a request admitted at `admitted_ms` counts in:
/// epoch-aligned windows for local rates; for global ones (windows longer
/// than the run) the Redis lifetime.
fn window_of(run: &Run<'_>, rate: &RatePlan, admitted_ms: u64) -> u64 {
    if rate.global {
        redis_lifetime(run, admitted_ms) as u64
    } else {
        admitted_ms / 1000 / rate.window_secs.max(1)
    }
}

fn redis_lifetime(run: &Run<'_>, at_ms: u64) -> usize {
    run.faults
        .iter()
        .filter(|x| x.component == Component::Redis && x.killed_ms <= at_ms)
        .count()
}

/// Every window of every limit: the final charges of the requests admitted
/// in it stay within the limit.
fn check_windows(run: &Run<'_>, f: &mut Findings) {
    for sub in &run.plan.subscriptions {
        let admitted: Vec<&AuditLine> = run
            .audit
            .iter()
            .filter(|l| l.subscription.as_deref() == Some(sub.name) && l.admitted())
            .collect();
        let scopes = [(&sub.limits, false), (&sub.key_limits, true)];
        for (rates, per_key) in scopes {
            for rate in rates.iter() {
                let mut windows: BTreeMap<(String, u64), u64> = BTreeMap::new();
                for line in &admitted {
                    let scope = if per_key {
                        line.key_id.clone().unwrap_or_default()
                    } else {
                        sub.name.to_string()
                    };
                    let used = match rate.quantity {
                        Quantity::Requests => 1,
                        Quantity::Tokens => line.total_tokens,
                    };
                    *windows
                        .entry((scope, window_of(run, rate, line.admitted_ms)))
                        .or_default() += used;
                }
                f.windows_checked += windows.len() as u64;
                for ((scope, window), used) in windows {
                    if used > rate.amount {
                        let at = if rate.global {
                            format!("Redis lifetime {window}")
                        } else {
                            format!("window starting {} s", window * rate.window_secs)
                        };
                        f.over_limit.push(format!(
                            "{} {scope}: {used} {} in {at}, limit {}/{}s{}",
                            if per_key { "key" } else { "subscription" },
                            rate.quantity.as_str(),
                            rate.amount,
                            rate.window_secs,
                            if rate.global { " (global)" } else { "" },
                        ));
                    }
                }
            }
        }
    }
}

/// The audit log and the filter's own counters agree, per subscription.
fn check_metrics(run: &Run<'_>, f: &mut Findings) {
    use maas_testkit::prometheus::metric;
    for sub in &run.plan.subscriptions {
        let lines: Vec<&AuditLine> = run
            .audit
            .iter()
            .filter(|l| l.subscription.as_deref() == Some(sub.name))
            .collect();
        let sum = |field: fn(&AuditLine) -> u64| lines.iter().map(|l| field(l)).sum::<u64>();
        let labels = [("subscription", sub.name)];
        let pairs = [
            ("maas_prompt_tokens_total", sum(|l| l.prompt_tokens)),
            ("maas_completion_tokens_total", sum(|l| l.completion_tokens)),
            ("maas_total_tokens_total", sum(|l| l.total_tokens)),
        ];
        for (name, audit) in pairs {
            let counted = metric(&run.filter_metrics, name, &labels).unwrap_or(0.0) as u64;
            if counted != audit {
                f.metric_mismatches.push(format!(
                    "{name}{{subscription={}}}: metrics {counted}, audit log {audit}",
                    sub.name
                ));
            }
        }
        let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
        for l in &lines {
            *outcomes.entry(l.outcome.as_str()).or_default() += 1;
        }
        for (outcome, audit) in outcomes {
            let labels = [("subscription", sub.name), ("outcome", outcome)];
            let counted =
                metric(&run.filter_metrics, "maas_requests_total", &labels).unwrap_or(0.0) as u64;
            if counted != audit {
                f.metric_mismatches.push(format!(
                    "maas_requests_total{{subscription={},outcome={outcome}}}: metrics {counted}, audit log {audit}",
                    sub.name
                ));
            }
        }
    }
}

/// Global limits cannot be checked while their limiter is down: a request
/// of a subscription with global limits admitted then was let through
/// unchecked (the failure mode is deny).
fn check_faults(run: &Run<'_>, f: &mut Findings) {
    let global_subs: Vec<&str> = run
        .plan
        .subscriptions
        .iter()
        .filter(|s| s.limits.iter().chain(&s.key_limits).any(|r| r.global))
        .map(|s| s.name)
        .collect();
    for fault in &run.faults {
        let down = |t: u64| fault.killed_ms <= t && t < fault.back_ms;
        let mut answers = BTreeMap::new();
        for s in run.sent.iter().filter(|s| down(s.sent_ms)) {
            let sub = run.plan.clients[s.client].subscription.to_string();
            let status = s.status.map_or("no answer".into(), |c| c.to_string());
            *answers.entry((sub, status)).or_default() += 1;
        }
        if matches!(fault.component, Component::Limiter | Component::Redis) {
            for line in run
                .audit
                .iter()
                .filter(|l| down(l.start_ms) && l.admitted())
            {
                let sub = line.subscription.as_deref().unwrap_or("");
                if global_subs.contains(&sub) {
                    f.fail_open.push(format!(
                        "{sub} request at {} ms admitted while {} was down",
                        line.start_ms,
                        fault.component.name()
                    ));
                }
            }
        }
        f.faults.push(FaultRow {
            fault: *fault,
            answers,
        });
    }
}

/// Redis's committed tokens per lifetime against the audit charges of the
/// requests that ended in it.
fn compare_limiter(run: &Run<'_>, f: &mut Findings) {
    let global_token_subs = run.plan.subscriptions.iter().filter(|s| {
        s.source == Source::Config
            && s.limits
                .iter()
                .any(|r| r.global && r.quantity == Quantity::Tokens)
    });
    let limiter_down = |t: u64| {
        run.faults.iter().any(|x| {
            matches!(x.component, Component::Limiter | Component::Redis)
                && x.killed_ms <= t
                && t < x.back_ms
        })
    };
    for sub in global_token_subs {
        for snap in &run.redis {
            let ended: Vec<&AuditLine> = run
                .audit
                .iter()
                .filter(|l| {
                    l.subscription.as_deref() == Some(sub.name)
                        && l.end_ms() <= snap.taken_ms
                        && redis_lifetime(run, l.end_ms()) == snap.lifetime
                })
                .collect();
            let down: Vec<&&AuditLine> = ended
                .iter()
                .filter(|l| limiter_down(l.end_ms()) && l.total_tokens > 0)
                .collect();
            f.limiter.push(LimiterRow {
                lifetime: snap.lifetime,
                subscription: sub.name.to_string(),
                redis_tokens: subscription_counter(&snap.counters, sub.name, "tokens"),
                audit_tokens: ended.iter().map(|l| l.total_tokens).sum(),
                ended_while_down: down.len() as u64,
                ended_while_down_tokens: down.iter().map(|l| l.total_tokens).sum(),
            });
        }
    }
}

/// The soak's table (Markdown) and its notes.
pub fn markdown(run: &Run<'_>, f: &Findings) -> String {
    let mut out = String::new();
    let mut row = |what: &str, value: String| out.push_str(&format!("| {what} | {value} |\n"));
    row("measure", "value".into());
    row("---", "---".into());
    let kinds: Vec<String> = f
        .sent_by_kind
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    row(
        "requests sent",
        format!(
            "{} ({}; {} keys)",
            f.sent,
            kinds.join(", "),
            run.key_ids.len()
        ),
    );
    row(
        "served (2xx)",
        format!("{} (of which {} cut by the client)", f.served, f.cut),
    );
    for (code, n) in &f.refused {
        row(&format!("refused: {code}"), n.to_string());
    }
    row("no HTTP answer", f.transport_errors.to_string());
    let faults: Vec<String> = run
        .faults
        .iter()
        .map(|x| {
            format!(
                "{} ({:.1} s down)",
                x.component.name(),
                (x.back_ms - x.killed_ms) as f64 / 1000.0
            )
        })
        .collect();
    row(
        "faults injected (SIGKILL, restart on the same port)",
        format!("{}: {}", run.faults.len(), faults.join(", ")),
    );
    row(
        "admitted past a limit (target 0)",
        format!("{} of {} windows", f.over_limit.len(), f.windows_checked),
    );
    row(
        "admitted while the limiter or Redis was down (target 0)",
        f.fail_open.len().to_string(),
    );
    row("charges lost (target 0)", f.lost.len().to_string());
    row("charges doubled (target 0)", f.doubled.len().to_string());
    row(
        "complete responses charged other than their usage (target 0)",
        f.mischarged.len().to_string(),
    );
    row(
        "audit log vs filter metrics",
        if f.metric_mismatches.is_empty() {
            "equal (prompt, completion, total tokens and requests by outcome, per subscription)"
                .into()
        } else {
            format!("{} mismatches", f.metric_mismatches.len())
        },
    );
    let (a, s) = (f.audit_tokens, f.server_tokens);
    row(
        "tokens charged (audit) / computed (inference server)",
        format!(
            "{} / {} (prompt {} / {}, completion {} / {})",
            a.total(),
            s.total(),
            a.prompt,
            s.prompt,
            a.completion,
            s.completion
        ),
    );
    row(
        "over-count in total (audit − server)",
        format!(
            "{} tokens ({:+.1} %)",
            a.total() as i64 - s.total() as i64,
            100.0 * (a.total() as f64 - s.total() as f64) / (s.total().max(1) as f64)
        ),
    );
    row(
        "over-count by cause",
        format!(
            "cut streams ≤ {} tokens (charge − prompt − events read); not served {} tokens",
            f.cut_overcount_total,
            f.charged_never_reached_tokens + f.charged_unserved_other_tokens
        ),
    );
    row(
        "worst over-count, complete response",
        format!("{} tokens", f.worst_complete_overcount),
    );
    row(
        "worst over-count, cut stream (upper bound)",
        format!("{} tokens: {}", f.worst_cut_overcount, f.worst_cut_detail),
    );
    row(
        "cut streams charged less than prompt + max_tokens (the server may have computed more)",
        f.cut_possibly_under.to_string(),
    );
    row(
        "charged though no model saw them (non-2xx, sent while the inference server was down)",
        format!(
            "{} requests, {} tokens",
            f.charged_never_reached, f.charged_never_reached_tokens
        ),
    );
    row(
        "charged, not served, otherwise (in flight at the kill)",
        format!(
            "{} requests, {} tokens",
            f.charged_unserved_other, f.charged_unserved_other_tokens
        ),
    );
    let failed = |name, result| {
        maas_testkit::prometheus::metric(&run.filter_metrics, name, &[("result", result)])
            .unwrap_or(0.0)
    };
    row(
        "filter: limiter calls failed / key syncs failed",
        format!(
            "{} / {}",
            failed("maas_limiter_calls_total", "failed"),
            failed("maas_key_syncs_total", "failed")
        ),
    );
    for l in &f.limiter {
        row(
            &format!(
                "limiter (Redis lifetime {}) vs audit, {} tokens",
                l.lifetime, l.subscription
            ),
            format!(
                "{} / {} (missing {}); {} requests ({} tokens) of them ended while the limiter or Redis was down",
                l.redis_tokens
                    .map_or("no counter".into(), |v| v.to_string()),
                l.audit_tokens,
                l.audit_tokens as i64 - l.redis_tokens.unwrap_or(0),
                l.ended_while_down,
                l.ended_while_down_tokens,
            ),
        );
    }
    for fault in &f.faults {
        let answers: Vec<String> = fault
            .answers
            .iter()
            .map(|((sub, status), n)| format!("{sub} {status}×{n}"))
            .collect();
        row(
            &format!("while {} was down", fault.fault.component.name()),
            answers.join(", "),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::client::Kind;
    use crate::soak::plan::Plan;

    fn line(start_ms: u64, key: &str, outcome: &str, tokens: (u64, u64)) -> AuditLine {
        AuditLine {
            start_ms,
            admitted_ms: start_ms,
            key_id: Some(key.into()),
            subscription: Some("cp-tight".into()),
            status: Some(200),
            outcome: outcome.into(),
            error_code: None,
            reserved_tokens: 400,
            prompt_tokens: tokens.0,
            completion_tokens: tokens.1,
            total_tokens: tokens.0 + tokens.1,
            usage: Some("reported".into()),
            latency_ms: 100,
        }
    }

    fn sent(sent_ms: u64, kind: Kind, usage: Option<(u64, u64)>) -> Sent {
        Sent {
            client: 6,
            kind,
            prompt: 0,
            sent_ms,
            elapsed_ms: 200,
            status: Some(200),
            error: None,
            usage: usage.map(|(prompt, completion)| Tokens { prompt, completion }),
            content_events: 2,
            cut: matches!(kind, Kind::Cut { .. }),
            transport_error: None,
        }
    }

    fn run<'a>(plan: &'a Plan, sent: Vec<Sent>, audit: Vec<AuditLine>) -> Run<'a> {
        let mut key_ids: Vec<String> = (0..plan.clients.len()).map(|i| format!("k{i}")).collect();
        key_ids[6] = "tight".into();
        Run {
            plan,
            key_ids,
            sent,
            audit,
            faults: Vec::new(),
            server: Vec::new(),
            redis: Vec::new(),
            filter_metrics: String::new(),
        }
    }

    #[test]
    fn requests_pair_with_their_lines_and_wrong_charges_are_named() {
        let plan = Plan::standard(1.0, 10);
        let sent = vec![
            sent(1_000, Kind::Plain, Some((30, 5))),
            sent(2_000, Kind::Stream, Some((30, 5))),
            sent(3_000, Kind::Cut { after_events: 2 }, None),
            sent(4_000, Kind::Plain, Some((30, 5))),
        ];
        let audit = vec![
            line(1_001, "tight", "ok", (30, 5)),
            line(2_001, "tight", "ok", (30, 10)),
            line(3_001, "tight", "incomplete", (300, 2)),
            line(3_500, "tight", "ok", (1, 1)),
        ];
        let f = compare(&run(&plan, sent, audit));
        assert_eq!(f.lost.len(), 1, "{:?}", f.lost); // the last plain has no line
        assert_eq!(f.doubled.len(), 1, "{:?}", f.doubled); // the line at 3500
        assert_eq!(f.mischarged.len(), 1, "{:?}", f.mischarged); // 10 for 5
        assert_eq!(f.worst_cut_overcount, 302 - 32);
    }

    #[test]
    fn windows_over_their_limit_are_reported() {
        let plan = Plan::standard(1.0, 10);
        // cp-tight: 4 requests per 10 s.
        let audit: Vec<AuditLine> = (0..5)
            .map(|i| line(20_000 + i * 100, "tight", "ok", (10, 1)))
            .chain([line(31_000, "tight", "rate_limited", (0, 0))])
            .collect();
        let f = compare(&run(&plan, Vec::new(), audit));
        assert_eq!(f.over_limit.len(), 1, "{:?}", f.over_limit);
        assert!(f.over_limit[0].contains("5 requests"), "{:?}", f.over_limit);
    }
}
