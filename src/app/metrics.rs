//! `--metrics`: what a scrape of `/metrics` shows, in the OpenMetrics text format that
//! Prometheus reads, rendered with `prometheus-client` from the counters of `base::metrics`.
//!
//! A single process shows its own counters. A master shows the sum over its workers: the
//! counters of the workers alive now, from their slots of the shared memory, plus those of
//! every worker that has exited (added to `retired` as it was reaped), so that no counter goes
//! backwards when a worker is replaced. It never runs any of the workers' code to do so.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::base::metrics::{self, Counters, Gauge, Histogram, Refused, SharedSlots, BOUNDS_US, CODES};

/// Why a master replaced a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// It died (killed, crashed, or exited on its own).
    Died,
    /// It failed while starting.
    StartFailed,
    /// `--max-requests`.
    MaxRequests,
    /// `--request-timeout`.
    RequestTimeout,
    /// `--max-rss`.
    MaxRss,
    /// `--max-lifetime`.
    MaxLifetime,
    /// A reload (SIGHUP).
    Reload,
}

impl RestartReason {
    /// Every reason, in the order of [`Restarts`].
    pub const ALL: [RestartReason; 7] = [
        RestartReason::Died,
        RestartReason::StartFailed,
        RestartReason::MaxRequests,
        RestartReason::RequestTimeout,
        RestartReason::MaxRss,
        RestartReason::MaxLifetime,
        RestartReason::Reload,
    ];

    fn label(self) -> &'static str {
        match self {
            RestartReason::Died => "died",
            RestartReason::StartFailed => "start_failed",
            RestartReason::MaxRequests => "max_requests",
            RestartReason::RequestTimeout => "request_timeout",
            RestartReason::MaxRss => "max_rss",
            RestartReason::MaxLifetime => "max_lifetime",
            RestartReason::Reload => "reload",
        }
    }
}

/// Worker restarts by reason (the master's own count).
#[derive(Debug, Default, Clone)]
pub struct Restarts([u64; RestartReason::ALL.len()]);

impl Restarts {
    /// Counts one restart.
    pub fn count(&mut self, reason: RestartReason) {
        self.0[reason as usize] += 1;
    }
}

/// One worker process as `/proc` shows it.
#[derive(Debug, Clone, Copy)]
struct Usage {
    pid: u32,
    rss: u64,
    cpu_seconds: f64,
}

/// Everything one scrape shows.
#[derive(Debug)]
struct Snapshot {
    totals: Box<Counters>,
    in_flight: u64,
    workers: Vec<Usage>,
    restarts: Option<Restarts>,
}

/// What a worker and its app's interpreter process (external mode) use, together.
fn usage(pid: u32, app_pid: Option<u32>) -> Option<Usage> {
    let (rss, cpu_seconds) = metrics::process_usage(pid)?;
    let (app_rss, app_cpu) = app_pid.and_then(metrics::process_usage).unwrap_or((0, 0.0));
    Some(Usage {
        pid,
        rss: rss + app_rss,
        cpu_seconds: cpu_seconds + app_cpu,
    })
}

/// The page for a single process: its own counters.
pub fn render_own() -> String {
    let totals = Box::new(Counters::new());
    let own = metrics::current();
    totals.add_from(own, true);
    let in_flight = started_not_finished(own);
    let workers = usage(std::process::id(), metrics::app_pid())
        .into_iter()
        .collect();
    render(Snapshot {
        totals,
        in_flight,
        workers,
        restarts: None,
    })
}

/// The page for a master: the workers' counters summed, those of exited workers included.
pub fn render_master(slots: &SharedSlots, retired: &Counters, restarts: &Restarts) -> String {
    let totals = Box::new(Counters::new());
    totals.add_from(retired, false);
    let mut in_flight = 0;
    let mut workers = Vec::new();
    for slot in slots.live() {
        totals.add_from(&slot.counters, true);
        in_flight += started_not_finished(&slot.counters);
        let pid = slot.pid.load(std::sync::atomic::Ordering::Relaxed) as u32;
        let app_pid = u32::try_from(slot.app_pid.load(std::sync::atomic::Ordering::Relaxed))
            .ok()
            .filter(|p| *p > 0);
        workers.extend(usage(pid, app_pid));
    }
    render(Snapshot {
        totals,
        in_flight,
        workers,
        restarts: Some(restarts.clone()),
    })
}

fn started_not_finished(counters: &Counters) -> u64 {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    load(&counters.started).saturating_sub(load(&counters.finished))
}

fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text.clear();
    }
    text
}

/// A histogram whose buckets are already counted.
#[derive(Debug)]
struct CountedHistogram<'a>(&'a Histogram);

impl EncodeMetric for CountedHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .enumerate()
            .map(|(i, count)| {
                let bound = BOUNDS_US.get(i).map_or(f64::MAX, |us| *us as f64 / 1e6);
                (bound, load(count))
            })
            .collect();
        let sum = load(&self.0.sum_us) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, self.0.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One family of counters with one label.
fn labelled_counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (String, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in values {
        ConstCounter::new(count).encode(family.encode_family(&[(label, value.as_str())])?)?;
    }
    Ok(())
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let t = &self.totals;
        let codes = (0..CODES).filter_map(|code| {
            let count = load(&t.requests[code]);
            (count > 0).then(|| {
                (
                    if code == 0 {
                        "other".to_string()
                    } else {
                        code.to_string()
                    },
                    count,
                )
            })
        });
        labelled_counters(
            &mut encoder,
            "scgi_wsgi_requests",
            "Requests answered, by status code (counted when the response ends)",
            "code",
            codes,
        )?;
        CountedHistogram(&t.duration).encode(encoder.encode_descriptor(
            "scgi_wsgi_request_duration_seconds",
            "Time from a request's head received to its response ended",
            None,
            MetricType::Histogram,
        )?)?;
        CountedHistogram(&t.queue_wait).encode(encoder.encode_descriptor(
            "scgi_wsgi_request_queue_seconds",
            "Time complete requests waited before a worker thread took them",
            None,
            MetricType::Histogram,
        )?)?;
        gauge(
            &mut encoder,
            "scgi_wsgi_requests_in_flight",
            "Requests handed to the app whose response has not ended",
            self.in_flight,
        )?;
        gauge(
            &mut encoder,
            "scgi_wsgi_requests_queued",
            "Complete requests waiting for a worker thread (in the queue, or held by the loop while the queue is full)",
            t.gauge(Gauge::Queued) + t.gauge(Gauge::Held),
        )?;
        gauge(
            &mut encoder,
            "scgi_wsgi_connections_open",
            "Client connections open",
            t.gauge(Gauge::OpenConnections),
        )?;
        let mut threads = encoder.encode_descriptor(
            "scgi_wsgi_worker_threads",
            "Worker threads running a request (busy) or waiting for one (idle)",
            None,
            MetricType::Gauge,
        )?;
        for (state, gauge) in [("busy", Gauge::BusyThreads), ("idle", Gauge::IdleThreads)] {
            ConstGauge::new(t.gauge(gauge)).encode(threads.encode_family(&[("state", state)])?)?;
        }
        let refused = Refused::ALL
            .iter()
            .map(|cause| (cause.label().to_string(), load(&t.refused[*cause as usize])));
        labelled_counters(
            &mut encoder,
            "scgi_wsgi_refusals",
            "Requests refused (400, 408, 413, 503), requests held because the queue was full, times accepting stopped at --max-connections, peers closed for --allow-from",
            "cause",
            refused,
        )?;
        counter(
            &mut encoder,
            "scgi_wsgi_client_disconnects",
            "Clients that went away before their response was whole",
            load(&t.client_gone),
        )?;
        counter(
            &mut encoder,
            "scgi_wsgi_app_errors",
            "Requests whose app raised (answered 500, or cut after the response began)",
            load(&t.app_errors),
        )?;
        counter(
            &mut encoder,
            "scgi_wsgi_request_timeouts",
            "Requests past --request-timeout",
            load(&t.request_timeouts),
        )?;
        ConstCounter::new(load(&t.gil_wait_us) as f64 / 1e6).encode(encoder.encode_descriptor(
            "scgi_wsgi_gil_wait_seconds",
            "Time worker threads waited to take the GIL back (embedded interpreter)",
            None,
            MetricType::Counter,
        )?)?;
        self.encode_workers(&mut encoder)
    }
}

impl Snapshot {
    fn encode_workers(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        if let Some(restarts) = &self.restarts {
            let reasons = RestartReason::ALL
                .iter()
                .map(|reason| (reason.label().to_string(), restarts.0[*reason as usize]));
            labelled_counters(
                encoder,
                "scgi_wsgi_worker_restarts",
                "Worker processes replaced, by reason",
                "reason",
                reasons,
            )?;
        }
        gauge(
            encoder,
            "scgi_wsgi_workers",
            "Worker processes serving",
            self.workers.len() as u64,
        )?;
        let mut rss = encoder.encode_descriptor(
            "scgi_wsgi_worker_resident_memory_bytes",
            "Resident memory of each worker process (with its app's interpreter process in the external mode)",
            None,
            MetricType::Gauge,
        )?;
        for worker in &self.workers {
            let pid = worker.pid.to_string();
            ConstGauge::new(worker.rss).encode(rss.encode_family(&[("worker", pid.as_str())])?)?;
        }
        let mut cpu = encoder.encode_descriptor(
            "scgi_wsgi_worker_cpu_seconds",
            "CPU time (user and system) of each worker process (with its app's interpreter process in the external mode)",
            None,
            MetricType::Counter,
        )?;
        for worker in &self.workers {
            let pid = worker.pid.to_string();
            ConstCounter::new(worker.cpu_seconds).encode(cpu.encode_family(&[("worker", pid.as_str())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_master_shows_live_and_retired_workers_together() {
        let slots = SharedSlots::map(4).unwrap();
        let retired = Counters::new();
        let a = slots.claim().unwrap();
        slots.assign(a, std::process::id() as i32);
        let counters = &slots.live().next().unwrap().counters;
        counters.requests[200].fetch_add(5, Ordering::Relaxed);
        counters.requests[404].fetch_add(1, Ordering::Relaxed);
        counters.started.fetch_add(7, Ordering::Relaxed);
        counters.finished.fetch_add(6, Ordering::Relaxed);
        retired.requests[200].fetch_add(10, Ordering::Relaxed);
        let mut restarts = Restarts::default();
        restarts.count(RestartReason::MaxRss);
        let page = render_master(&slots, &retired, &restarts);
        for line in [
            "scgi_wsgi_requests_total{code=\"200\"} 15",
            "scgi_wsgi_requests_total{code=\"404\"} 1",
            "scgi_wsgi_requests_in_flight 1",
            "scgi_wsgi_worker_restarts_total{reason=\"max_rss\"} 1",
            "scgi_wsgi_workers 1",
            "# EOF",
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?} in:\n{page}");
        }
        assert!(page.contains(&format!(
            "scgi_wsgi_worker_resident_memory_bytes{{worker=\"{}\"}}",
            std::process::id()
        )));
        assert!(page.contains("scgi_wsgi_request_duration_seconds_bucket{le=\"+Inf\"} 0"));
    }
}
