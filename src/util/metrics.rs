//! Prometheus metrics (`GET /metrics`, text format). Events are counted where
//! they happen (sources, preprocessing, training, feedback, chat); figures the
//! store already holds (stream sizes, the served version's perplexity per
//! stream) are read from it at scrape time by [`crate::serve::site`].

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// `source`, `outcome` = fetched | new | duplicate.
    pub source_items: IntCounterVec,
    /// `source`, `result` = ok | error.
    pub source_runs: IntCounterVec,
    /// `reason`.
    pub dropped: IntCounterVec,
    pub examples_made: IntCounter,
    /// `stream`, `split` = train | eval (scrape time).
    pub stream_examples: GaugeVec,
    pub train_steps: IntCounter,
    pub train_tokens_per_s: Gauge,
    pub train_loss: Gauge,
    /// `stream` (0 = probe set); the served version (scrape time).
    pub served_perplexity: GaugeVec,
    /// `decision` = promote | retrain | give_up.
    pub decisions: IntCounterVec,
    /// Per `[[publish]]` target: 1 when its last run succeeded.
    pub publish_up: GaugeVec,
    /// Per target: the served version it holds (0: the base).
    pub publish_version: GaugeVec,
    /// Per target: failed runs in a row.
    pub publish_failures: GaugeVec,
    /// `status` (HTTP code).
    pub chat_requests: IntCounterVec,
    /// `stream` = true | false.
    pub chat_duration: HistogramVec,
    pub chat_ttft: Histogram,
    pub chat_tokens: IntCounter,
    pub queue_depth: IntGauge,
    /// Sequences in the generation batch.
    pub batch_size: IntGauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    register(r, Gauge::new(name, help).expect("valid metric"))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(
        r,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// Latency buckets from 10 ms to 2 minutes.
const SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

fn seconds(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(SECONDS.to_vec())
}

/// The chat server's metrics, registered with the rest.
struct ChatMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    ttft: Histogram,
    tokens: IntCounter,
    queue_depth: IntGauge,
    batch_size: IntGauge,
}

impl ChatMetrics {
    fn new(r: &Registry) -> ChatMetrics {
        let ttft = seconds(
            "chat_time_to_first_token_seconds",
            "Time from a chat request to its first generated token.",
        );
        let duration = seconds(
            "chat_request_duration_seconds",
            "Time from a chat request to its last token.",
        );
        ChatMetrics {
            requests: counter_vec(
                r,
                "chat_requests_total",
                "Chat completion requests, by HTTP status.",
                &["status"],
            ),
            duration: register(
                r,
                HistogramVec::new(duration, &["stream"]).expect("valid metric"),
            ),
            ttft: register(r, Histogram::with_opts(ttft).expect("valid metric")),
            tokens: counter(
                r,
                "chat_completion_tokens_total",
                "Tokens generated for chat.",
            ),
            queue_depth: register(
                r,
                IntGauge::new(
                    "chat_queue_depth",
                    "Chat requests waiting for the generation worker.",
                )
                .expect("valid metric"),
            ),
            batch_size: register(
                r,
                IntGauge::new(
                    "chat_batch_size",
                    "Sequences generated together in the batch now.",
                )
                .expect("valid metric"),
            ),
        }
    }
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new_custom(Some("lorastream".into()), None).expect("valid prefix");
        let chat = ChatMetrics::new(&r);
        Metrics {
            source_items: counter_vec(
                &r,
                "source_items_total",
                "Records received from sources, by outcome (fetched, new, duplicate).",
                &["source", "outcome"],
            ),
            source_runs: counter_vec(
                &r,
                "source_runs_total",
                "Source runs, by result (ok, error).",
                &["source", "result"],
            ),
            dropped: counter_vec(
                &r,
                "preprocess_dropped_total",
                "Raw items dropped by preprocessing, by reason.",
                &["reason"],
            ),
            examples_made: counter(
                &r,
                "examples_made_total",
                "Chat examples made from raw items.",
            ),
            stream_examples: gauge_vec(
                &r,
                "stream_examples",
                "Examples in each sealed stream, by split.",
                &["stream", "split"],
            ),
            train_steps: counter(&r, "train_steps_total", "Optimizer steps taken."),
            train_tokens_per_s: gauge(
                &r,
                "train_tokens_per_second",
                "Training throughput at the last step.",
            ),
            train_loss: gauge(&r, "train_loss", "Training loss at the last step."),
            served_perplexity: gauge_vec(
                &r,
                "served_perplexity",
                "Perplexity of the served version on each stream's eval split (stream 0: probe set).",
                &["stream"],
            ),
            decisions: counter_vec(
                &r,
                "feedback_decisions_total",
                "Feedback decisions on candidates, by outcome.",
                &["decision"],
            ),
            publish_up: gauge_vec(
                &r,
                "publish_target_up",
                "1 when the publish target's last run succeeded, 0 while it is degraded.",
                &["target", "kind"],
            ),
            publish_version: gauge_vec(
                &r,
                "publish_target_version",
                "The served version the publish target holds (0: the base).",
                &["target"],
            ),
            publish_failures: gauge_vec(
                &r,
                "publish_target_failures",
                "Failed runs of the publish target in a row.",
                &["target"],
            ),
            chat_requests: chat.requests,
            chat_duration: chat.duration,
            chat_ttft: chat.ttft,
            chat_tokens: chat.tokens,
            queue_depth: chat.queue_depth,
            batch_size: chat.batch_size,
            registry: r,
        }
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Sets a gauge only to finite values (a NaN loss is logged elsewhere, not exported).
pub fn set_finite(g: &Gauge, v: f64) {
    if v.is_finite() {
        g.set(v);
    }
}
