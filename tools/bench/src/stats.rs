//! Measurements: latency histograms (HdrHistogram, microsecond resolution), error counts by
//! code, the run's bounds (count and time), and the JSON / Markdown report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

/// A latency histogram in microseconds.
#[derive(Clone)]
pub struct Lat(Option<Histogram<u64>>);

impl Default for Lat {
    fn default() -> Self {
        // 1 µs to 1 h at 3 significant figures; `new_with_bounds` only fails on bad bounds.
        Lat(Histogram::new_with_bounds(1, 3_600_000_000, 3).ok())
    }
}

impl Lat {
    pub fn record(&mut self, d: Duration) {
        self.record_us(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    pub fn record_us(&mut self, us: u64) {
        if let Some(h) = &mut self.0 {
            h.saturating_record(us.max(1));
        }
    }

    pub fn merge(&mut self, other: &Lat) {
        if let (Some(a), Some(b)) = (&mut self.0, &other.0) {
            let _ = a.add(b);
        }
    }

    pub fn count(&self) -> u64 {
        self.0.as_ref().map_or(0, Histogram::len)
    }

    /// The value at a quantile, in milliseconds.
    pub fn q_ms(&self, q: f64) -> f64 {
        self.0
            .as_ref()
            .filter(|h| !h.is_empty())
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
    }

    pub fn max_ms(&self) -> f64 {
        self.0
            .as_ref()
            .filter(|h| !h.is_empty())
            .map_or(0.0, |h| h.max() as f64 / 1000.0)
    }

    pub fn mean_ms(&self) -> f64 {
        self.0
            .as_ref()
            .filter(|h| !h.is_empty())
            .map_or(0.0, |h| h.mean() / 1000.0)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "count": self.count(),
            "p50_ms": round3(self.q_ms(0.50)),
            "p90_ms": round3(self.q_ms(0.90)),
            "p99_ms": round3(self.q_ms(0.99)),
            "max_ms": round3(self.max_ms()),
            "mean_ms": round3(self.mean_ms()),
        })
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What one worker measured; merged at the end.
#[derive(Clone, Default)]
pub struct Stats {
    /// Completed turns / requests.
    pub ok: u64,
    /// Failures by code (the server's `error.code`, `http_<status>`, or a client-side name such
    /// as `turn_timeout`, `socket_closed`, `transport`).
    pub errors: BTreeMap<String, u64>,
    /// Latency histograms by name (`ack`, `first_delta`, `done`, `latency`, `ttft`, …).
    pub lat: BTreeMap<&'static str, Lat>,
    /// Other counters by name (`chunks`, …).
    pub counters: BTreeMap<&'static str, u64>,
    /// When the last turn completed.
    pub last: Option<Instant>,
}

impl Stats {
    pub fn error(&mut self, code: impl Into<String>) {
        *self.errors.entry(code.into()).or_insert(0) += 1;
    }

    pub fn lat(&mut self, name: &'static str) -> &mut Lat {
        self.lat.entry(name).or_default()
    }

    pub fn bump(&mut self, name: &'static str, by: u64) {
        *self.counters.entry(name).or_insert(0) += by;
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, o: &Stats) {
        self.ok += o.ok;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &o.lat {
            self.lat.entry(k).or_default().merge(v);
        }
        for (k, v) in &o.counters {
            *self.counters.entry(k).or_insert(0) += v;
        }
        self.last = self.last.max(o.last);
    }

    /// `{turns, errors_total, errors, throughput_per_s, latency_ms: {...}, counters}`.
    pub fn to_json(&self, elapsed: Duration) -> Value {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let lat: Map<String, Value> = self
            .lat
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_json()))
            .collect();
        json!({
            "turns": self.ok,
            "errors_total": self.errors_total(),
            "errors": self.errors,
            "elapsed_s": round3(elapsed.as_secs_f64()),
            "throughput_per_s": round3(self.ok as f64 / secs),
            "latency_ms": lat,
            "counters": self.counters,
        })
    }
}

/// The bounds of a load phase: a deadline, an optional number of turns, and a stop signal.
pub struct Bounds {
    pub start: Instant,
    pub deadline: Instant,
    pub max: Option<u64>,
    issued: AtomicU64,
    /// Turns finished (ok or not), for the progress bar.
    pub finished: AtomicU64,
    pub failed: AtomicU64,
    /// Cancelled when the phase must end now (in-flight work is abandoned).
    pub stop: CancellationToken,
}

impl Bounds {
    pub fn new(duration: Duration, max: Option<u64>) -> Self {
        let start = Instant::now();
        Bounds {
            start,
            deadline: start + duration,
            max,
            issued: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stop: CancellationToken::new(),
        }
    }

    /// Takes the right to start one more turn; false once the count or the time is used up.
    pub fn try_take(&self) -> bool {
        if self.stop.is_cancelled() || Instant::now() >= self.deadline {
            return false;
        }
        match self.max {
            Some(max) => self.issued.fetch_add(1, Ordering::Relaxed) < max,
            None => {
                self.issued.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    pub fn done(&self, ok: bool) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Resolves when no more turns may start (deadline passed or count used up).
    pub async fn exhausted(&self) {
        loop {
            let count_done = self
                .max
                .is_some_and(|m| self.issued.load(Ordering::Relaxed) >= m);
            if count_done || self.stop.is_cancelled() || Instant::now() >= self.deadline {
                return;
            }
            let wait = self
                .deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            tokio::time::sleep(wait).await;
        }
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected e.g. 10s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("`{s}`: must be between 0 and 24h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The server process's resident memory (`VmRSS`, KiB) and CPU time used so far.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub cpu_secs: f64,
}

pub fn sample_process(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ProcSample {
        rss_kib,
        cpu_secs: ticks / 100.0, // USER_HZ is 100 on Linux
    })
}

/// Writes `report` as JSON to `out` and a Markdown summary next to it (same name, `.md`);
/// returns the Markdown.
pub fn write_reports(out: &Path, report: &Value) -> std::io::Result<String> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(out, text + "\n")?;
    let md = markdown(report);
    std::fs::write(out.with_extension("md"), &md)?;
    Ok(md)
}

fn num(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}

fn lat_table(md: &mut String, title: &str, lat: &Value) {
    let Some(m) = lat.as_object().filter(|m| !m.is_empty()) else {
        return;
    };
    let _ = writeln!(md, "\n**{title}** (ms)\n");
    let _ = writeln!(md, "| measure | count | p50 | p90 | p99 | max | mean |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for (k, v) in m {
        let _ = writeln!(
            md,
            "| {k} | {} | {} | {} | {} | {} | {} |",
            num(&v["count"]),
            num(&v["p50_ms"]),
            num(&v["p90_ms"]),
            num(&v["p99_ms"]),
            num(&v["max_ms"]),
            num(&v["mean_ms"]),
        );
    }
}

fn phase(md: &mut String, title: &str, p: &Value) {
    let _ = writeln!(md, "\n### {title}\n");
    let _ = writeln!(
        md,
        "- completed: **{}** in {} s → **{} /s**",
        num(&p["turns"]),
        num(&p["elapsed_s"]),
        num(&p["throughput_per_s"])
    );
    let _ = writeln!(md, "- errors: {}", num(&p["errors_total"]));
    if let Some(e) = p["errors"].as_object().filter(|e| !e.is_empty()) {
        for (code, n) in e {
            let _ = writeln!(md, "  - `{code}`: {}", num(n));
        }
    }
    if let Some(c) = p["counters"].as_object().filter(|c| !c.is_empty()) {
        for (k, v) in c {
            let _ = writeln!(md, "- {k}: {}", num(v));
        }
    }
    lat_table(md, "latency", &p["latency_ms"]);
}

/// The Markdown summary of a report.
pub fn markdown(r: &Value) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# questech-bench `{}` — {}\n",
        r["mode"].as_str().unwrap_or("?"),
        r["url"].as_str().unwrap_or("?")
    );
    let _ = writeln!(md, "- started: {}", r["started_at"].as_str().unwrap_or("?"));
    let _ = writeln!(md, "- command: `{}`", r["command"].as_str().unwrap_or("?"));
    if let Some(c) = r["config"].as_object() {
        let cfg: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(md, "- config: {}", cfg.join(", "));
    }
    if r.get("server").is_some_and(|s| !s.is_null()) {
        let s = &r["server"];
        let _ = writeln!(
            md,
            "- server process: RSS {} → {} KiB, CPU {} s",
            num(&s["rss_before_kib"]),
            num(&s["rss_after_kib"]),
            num(&s["cpu_secs"])
        );
    }
    phase(&mut md, "Against the server", &r["result"]);
    if let Some(o) = r["overhead"].as_object() {
        if let Some(h) = r["result"]["latency_ms"]["overhead_header"].as_object() {
            let _ = writeln!(
                md,
                "\n`X-Questech-Overhead-Ms`: p50 {} ms, p99 {} ms, max {} ms",
                num(&h["p50_ms"]),
                num(&h["p99_ms"]),
                num(&h["max_ms"])
            );
        }
        let _ = writeln!(
            md,
            "\n**Added by the server vs. the upstream directly** (ms)\n"
        );
        let _ = writeln!(md, "| measure | p50 | p99 |");
        let _ = writeln!(md, "|---|---:|---:|");
        for (k, v) in o {
            let _ = writeln!(
                md,
                "| {k} | {} | {} |",
                num(&v["p50_ms"]),
                num(&v["p99_ms"])
            );
        }
    } else if let Some(h) = r["result"]["latency_ms"]["overhead_header"].as_object() {
        let _ = writeln!(
            md,
            "\n`X-Questech-Overhead-Ms`: p50 {} ms, p99 {} ms, max {} ms",
            num(&h["p50_ms"]),
            num(&h["p99_ms"]),
            num(&h["max_ms"])
        );
    }
    if r.get("baseline").is_some_and(|b| !b.is_null()) {
        phase(&mut md, "Baseline: the upstream directly", &r["baseline"]);
    }
    if let Some(i) = r["idle"].as_object() {
        let _ = writeln!(md, "\n### Idle sockets\n");
        for (k, v) in i {
            let _ = writeln!(md, "- {k}: {}", num(v));
        }
    }
    md
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("100h").is_err());
    }

    #[test]
    fn histogram_quantiles_and_merge() {
        let mut a = Lat::default();
        for ms in 1..=100u64 {
            a.record(Duration::from_millis(ms));
        }
        let mut b = Lat::default();
        b.record(Duration::from_secs(2));
        a.merge(&b);
        assert_eq!(a.count(), 101);
        assert!((a.q_ms(0.5) - 51.0).abs() < 0.1, "{}", a.q_ms(0.5));
        assert!((a.max_ms() - 2000.0).abs() < 2.0);
    }

    #[test]
    fn bounds_count() {
        let b = Bounds::new(Duration::from_secs(60), Some(3));
        assert!(b.try_take() && b.try_take() && b.try_take());
        assert!(!b.try_take());
    }
}
