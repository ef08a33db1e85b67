//! The server's counters, for `--metrics`: what each process counts on its request path (a
//! relaxed atomic add or two per event, nothing at all while metrics are off), and the
//! shared memory through which a master sums them over its workers without running any of
//! their code.
//!
//! Each process counts into one [`Counters`]: a process-local one, or, under a master, its
//! slot of the [`SharedSlots`] the master mapped before forking. When a worker is gone the
//! master adds its slot's counters to its own retired total, so that counters never go
//! backwards; gauges (the last value a worker stored) are summed over live workers only.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::sys;

/// Upper bounds, in microseconds, of the buckets of the duration histograms; a last bucket
/// (`+Inf`) takes the rest.
pub const BOUNDS_US: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];

/// Buckets of a histogram, `+Inf` included.
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

/// Status codes counted one by one (a code outside 100..=599 counts as 0).
pub const CODES: usize = 600;

/// A histogram of durations: how many fell in each bucket, and their sum.
#[derive(Debug)]
#[repr(C)]
pub struct Histogram {
    /// Observations per bucket (not cumulative).
    pub buckets: [AtomicU64; BUCKETS],
    /// The sum of all observations, in microseconds.
    pub sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, duration: Duration) {
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(BOUNDS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn add_from(&self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter().zip(&other.buckets) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(other.sum_us.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// How many observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// Why a request or a connection was refused or made to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 400: a malformed or oversized head, or a client that left mid-request.
    BadRequest,
    /// 408: the head or the body took too long (`--head-timeout`, `--body-timeout`).
    Timeout,
    /// 413: the body is over `--max-body`.
    TooLarge,
    /// 503: the body could not be stored.
    Unavailable,
    /// A complete request waited in the loop because the worker queue was full.
    QueueFull,
    /// The loop stopped accepting at `--max-connections`: connections wait in the backlog.
    MaxConnections,
    /// A peer not in `--allow-from` was closed at accept.
    NotAllowed,
}

impl Refused {
    /// Every cause, in the order of [`Counters::refused`].
    pub const ALL: [Refused; 7] = [
        Refused::BadRequest,
        Refused::Timeout,
        Refused::TooLarge,
        Refused::Unavailable,
        Refused::QueueFull,
        Refused::MaxConnections,
        Refused::NotAllowed,
    ];

    /// The cause as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::BadRequest => "400",
            Refused::Timeout => "408",
            Refused::TooLarge => "413",
            Refused::Unavailable => "503",
            Refused::QueueFull => "queue_full",
            Refused::MaxConnections => "max_connections",
            Refused::NotAllowed => "allow_from",
        }
    }

    /// The cause of an answer the server made itself, by its status code.
    pub fn of_status(code: u16) -> Option<Refused> {
        Some(match code {
            400 => Refused::BadRequest,
            408 => Refused::Timeout,
            413 => Refused::TooLarge,
            503 => Refused::Unavailable,
            _ => return None,
        })
    }
}

/// A value a process stores rather than counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// Requests waiting for a worker thread.
    Queued,
    /// Complete requests the loop holds because the queue is full.
    Held,
    /// Connections open.
    OpenConnections,
    /// Worker threads running a request.
    BusyThreads,
    /// Worker threads waiting for one.
    IdleThreads,
}

/// What one process counts.
#[derive(Debug)]
#[repr(C)]
pub struct Counters {
    /// Requests answered, by status code (counted when the response ends).
    pub requests: [AtomicU64; CODES],
    /// Request durations, from the head received to the response ended.
    pub duration: Histogram,
    /// Time complete requests waited before a worker thread took them.
    pub queue_wait: Histogram,
    /// Refusals by cause ([`Refused::ALL`]'s order).
    pub refused: [AtomicU64; Refused::ALL.len()],
    /// Clients that went away before their response was whole.
    pub client_gone: AtomicU64,
    /// Requests whose app raised (answered 500, or cut).
    pub app_errors: AtomicU64,
    /// Requests past `--request-timeout`.
    pub request_timeouts: AtomicU64,
    /// Time worker threads waited to take the GIL back, in microseconds (embedded mode).
    pub gil_wait_us: AtomicU64,
    /// Requests handed to the app side.
    pub started: AtomicU64,
    /// Requests handed to the app side whose response ended.
    pub finished: AtomicU64,
    /// The gauges ([`Gauge`]'s order).
    pub gauges: [AtomicU64; 5],
}

impl Counters {
    /// All zero.
    pub const fn new() -> Counters {
        Counters {
            requests: [const { AtomicU64::new(0) }; CODES],
            duration: Histogram::new(),
            queue_wait: Histogram::new(),
            refused: [const { AtomicU64::new(0) }; Refused::ALL.len()],
            client_gone: AtomicU64::new(0),
            app_errors: AtomicU64::new(0),
            request_timeouts: AtomicU64::new(0),
            gil_wait_us: AtomicU64::new(0),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            gauges: [const { AtomicU64::new(0) }; 5],
        }
    }

    /// Adds `other`'s counters (and, with `gauges`, its gauges) to these.
    pub fn add_from(&self, other: &Counters, gauges: bool) {
        let add = |mine: &AtomicU64, theirs: &AtomicU64| {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        for (mine, theirs) in self.requests.iter().zip(&other.requests) {
            add(mine, theirs);
        }
        self.duration.add_from(&other.duration);
        self.queue_wait.add_from(&other.queue_wait);
        for (mine, theirs) in self.refused.iter().zip(&other.refused) {
            add(mine, theirs);
        }
        add(&self.client_gone, &other.client_gone);
        add(&self.app_errors, &other.app_errors);
        add(&self.request_timeouts, &other.request_timeouts);
        add(&self.gil_wait_us, &other.gil_wait_us);
        add(&self.started, &other.started);
        add(&self.finished, &other.finished);
        if gauges {
            for (mine, theirs) in self.gauges.iter().zip(&other.gauges) {
                add(mine, theirs);
            }
        }
    }

    /// The value of a gauge.
    pub fn gauge(&self, gauge: Gauge) -> u64 {
        self.gauges[gauge as usize].load(Ordering::Relaxed)
    }

    /// Sets every counter and gauge back to zero.
    fn clear(&self) {
        let all = self
            .requests
            .iter()
            .chain(&self.duration.buckets)
            .chain([&self.duration.sum_us])
            .chain(&self.queue_wait.buckets)
            .chain([&self.queue_wait.sum_us])
            .chain(&self.refused)
            .chain([
                &self.client_gone,
                &self.app_errors,
                &self.request_timeouts,
                &self.gil_wait_us,
                &self.started,
                &self.finished,
            ])
            .chain(&self.gauges);
        for counter in all {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

impl Default for Counters {
    fn default() -> Counters {
        Counters::new()
    }
}

/// Whether metrics are on (`--metrics`): while off, nothing is counted.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// This process's counters when it has no slot of a master's.
static LOCAL: Counters = Counters::new();
/// This process's slot of its master's shared memory; null without one.
static SLOT: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());

/// This process's slot, if it is a worker with one.
fn own_slot() -> Option<&'static Slot> {
    let slot = SLOT.load(Ordering::Relaxed);
    // SAFETY: a slot of the master's mapping, which lives as long as the process (see
    // `SharedSlots::map`); only atomics are reached through it.
    (!slot.is_null()).then(|| unsafe { &*slot })
}

/// Turns counting on, for the rest of the process.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether counting is on.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// This process's counters.
pub fn current() -> &'static Counters {
    match own_slot() {
        Some(slot) => &slot.counters,
        None => &LOCAL,
    }
}

/// A request's response ended with `status`, `head_at` being when its head was received;
/// `in_app`: it had been handed to the app side.
pub fn request_ended(status: u16, head_at: Instant, in_app: bool) {
    if !enabled() {
        return;
    }
    let counters = current();
    let code = usize::from(status).min(CODES - 1);
    let code = if code < 100 { 0 } else { code };
    counters.requests[code].fetch_add(1, Ordering::Relaxed);
    counters.duration.observe(head_at.elapsed());
    if in_app {
        counters.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// A complete request goes to the app side.
pub fn request_started() {
    if enabled() {
        current().started.fetch_add(1, Ordering::Relaxed);
    }
}

/// A worker thread took a request that had waited since `queued`.
pub fn queue_waited(queued: Instant) {
    if enabled() {
        current().queue_wait.observe(queued.elapsed());
    }
}

/// A worker thread took a request at its accept, without a wait.
pub fn queue_skipped() {
    if enabled() {
        current().queue_wait.observe(Duration::ZERO);
    }
}

/// A request or connection was refused (or made to wait) for `cause`.
pub fn refused(cause: Refused) {
    if enabled() {
        current().refused[cause as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A client went away before its response was whole.
pub fn client_gone() {
    if enabled() {
        current().client_gone.fetch_add(1, Ordering::Relaxed);
    }
}

/// An app raised while serving a request.
pub fn app_error() {
    if enabled() {
        current().app_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A request ran past `--request-timeout`.
pub fn request_timed_out() {
    if enabled() {
        current().request_timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

/// A worker thread waited `waited` to take the GIL back.
pub fn gil_waited(waited: Duration) {
    if enabled() {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        current().gil_wait_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// Stores the value of a gauge.
pub fn set(gauge: Gauge, value: usize) {
    if enabled() {
        current().gauges[gauge as usize].store(value as u64, Ordering::Relaxed);
    }
}

/// One worker's place in the shared memory.
#[repr(C)]
pub struct Slot {
    /// The worker's pid; 0 while the slot is free.
    pub pid: AtomicI32,
    /// The app's interpreter process of the worker (external mode), 0 if none: its memory
    /// and CPU time count as the worker's.
    pub app_pid: AtomicI32,
    /// What the worker counts.
    pub counters: Counters,
}

/// Slots for a master's workers, in memory shared with them (mapped before the first fork).
pub struct SharedSlots {
    slots: &'static [Slot],
}

impl SharedSlots {
    /// Maps `count` free slots. The mapping is never unmapped: workers keep their slot for
    /// their whole life, and the master its view.
    pub fn map(count: usize) -> io::Result<SharedSlots> {
        let bytes = count.max(1) * std::mem::size_of::<Slot>();
        // SAFETY: a fresh anonymous shared mapping; no existing memory is touched.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping is `bytes` long, zero-filled (all-zero is a valid Slot: free,
        // every atomic 0), suitably aligned (page-aligned), and lives for the process.
        let slots = unsafe { std::slice::from_raw_parts(address.cast::<Slot>(), count.max(1)) };
        Ok(SharedSlots { slots })
    }

    /// Gives a free slot to the worker `pid` (before it is forked: `pid` is then set once
    /// known, with [`SharedSlots::assign`]); `None` when all are taken.
    pub fn claim(&self) -> Option<usize> {
        self.slots.iter().position(|slot| {
            slot.pid
                .compare_exchange(0, -1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Names the worker that slot `index` belongs to.
    pub fn assign(&self, index: usize, pid: i32) {
        self.slots[index].pid.store(pid, Ordering::Release);
    }

    /// In a newly forked worker: count into slot `index` from now on.
    pub fn use_slot(&self, index: usize) {
        let slot = &self.slots[index] as *const Slot as *mut Slot;
        SLOT.store(slot, Ordering::Relaxed);
    }

    /// The slots of live workers.
    pub fn live(&self) -> impl Iterator<Item = &Slot> {
        self.slots
            .iter()
            .filter(|slot| slot.pid.load(Ordering::Acquire) > 0)
    }

    /// A worker has exited: adds its counters (not its gauges) to `retired` and frees its slot.
    pub fn release(&self, index: usize, retired: &Counters) {
        let slot = &self.slots[index];
        retired.add_from(&slot.counters, false);
        slot.counters.clear();
        slot.app_pid.store(0, Ordering::Relaxed);
        slot.pid.store(0, Ordering::Release);
    }

    /// Frees a slot claimed for a worker that could not be forked.
    pub fn unclaim(&self, index: usize) {
        self.slots[index].pid.store(0, Ordering::Release);
    }
}

/// The app's interpreter process of this worker (external mode), so that its memory counts
/// as this worker's (`--max-rss`, the metrics).
static APP_PID: AtomicI32 = AtomicI32::new(0);

/// Names the app's interpreter process of this worker (0: none).
pub fn set_app_pid(pid: u32) {
    let pid = i32::try_from(pid).unwrap_or(0);
    APP_PID.store(pid, Ordering::Relaxed);
    if let Some(slot) = own_slot() {
        slot.app_pid.store(pid, Ordering::Relaxed);
    }
}

/// The app's interpreter process of this worker, if any.
pub fn app_pid() -> Option<u32> {
    u32::try_from(APP_PID.load(Ordering::Relaxed))
        .ok()
        .filter(|pid| *pid > 0)
}

/// What `/proc` says of a process: resident memory in bytes and CPU time (user + system)
/// in seconds; `None` when it is gone.
pub fn process_usage(pid: u32) -> Option<(u64, f64)> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces and parentheses).
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety requirement.
    let page = sys::check(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // SAFETY: as above.
    let hz = sys::check(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    Some((resident_pages * page as u64, ticks as f64 / hz.max(1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::new();
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_micros(501));
        histogram.observe(Duration::from_secs(60));
        assert_eq!(histogram.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(histogram.buckets[1].load(Ordering::Relaxed), 1);
        assert_eq!(histogram.buckets[BUCKETS - 1].load(Ordering::Relaxed), 1);
        assert_eq!(histogram.count(), 3);
        assert_eq!(histogram.sum_us.load(Ordering::Relaxed), 60_001_001);
    }

    #[test]
    fn a_released_slot_adds_its_counters_to_the_retired_and_is_free_again() {
        let slots = SharedSlots::map(2).unwrap();
        let first = slots.claim().unwrap();
        slots.assign(first, 4242);
        let counters = &slots.slots[first].counters;
        counters.requests[200].fetch_add(3, Ordering::Relaxed);
        counters.gauges[Gauge::OpenConnections as usize].store(7, Ordering::Relaxed);
        assert_eq!(slots.live().count(), 1);
        let retired = Counters::new();
        slots.release(first, &retired);
        assert_eq!(retired.requests[200].load(Ordering::Relaxed), 3);
        assert_eq!(
            retired.gauge(Gauge::OpenConnections),
            0,
            "gauges die with the worker"
        );
        assert_eq!(slots.live().count(), 0);
        assert_eq!(counters.requests[200].load(Ordering::Relaxed), 0);
        assert_eq!(slots.claim(), Some(first), "free again");
    }

    #[test]
    fn this_process_is_readable_in_proc() {
        let (rss, cpu) = process_usage(std::process::id()).unwrap();
        assert!(rss > 1 << 20, "{rss}");
        assert!(cpu >= 0.0);
    }
}
