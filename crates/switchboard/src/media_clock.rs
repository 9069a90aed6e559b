//! One media clock for every call: a dedicated thread that sleeps to the earliest media deadline
//! of all calls, serves every call that is due in that one wake-up, and sends their RTP.
//!
//! Before it, each call's task slept on its own tokio timer (a 1 ms wheel tick, shared with the
//! call's WebSocket and JSON work on the same two workers): 500 calls meant 25,000 timer wake-ups
//! a second, each landing up to a tick late and queued behind whatever the worker was running.
//! Here a call's pacing state is shared (`Arc<Mutex<P: Paced>>`) between the call's task, which
//! feeds it audio, and the clock, which pulls frames out of it on time. Why one dedicated thread
//! and not one clock per runtime worker: docs/decisions/0003-media-clock.md.
//!
//! Rules that keep it honest:
//! - The clock never waits for a call. A call whose lock is busy (its task is queueing audio) is
//!   retried [`BUSY_RETRY`] later in the same schedule, never skipped for good, never waited on.
//! - No lock is held across a send: transmits are collected under the call's lock, then sent.
//! - Sends are non-blocking: a full socket buffer drops that packet and counts it
//!   (`switchboard_rtp_send_dropped_total{reason="would_block"}`); RTP is real time, a late
//!   packet is worth nothing.
//! - Registration, unregistration and [`ClockRegistration::reschedule`] go through an inbox the
//!   clock drains at each wake-up. The inbox is bounded by the live registrations: each
//!   registration is added and removed once, and reschedules are coalesced per registration
//!   (the latest deadline wins), so it never holds more than two entries per call, plus one
//!   per extra media leg (socket changes are coalesced per leg, at most [`MAX_LEGS`] legs).
//! - A call may have more than one media leg (a bridged transfer): each [`RtpTransmit`] names
//!   the leg whose socket sends it; leg 0's socket is given at registration, the others are
//!   attached and detached through the inbox ([`ClockRegistration::attach_socket`]). A packet
//!   for a leg without a socket is dropped and counted (`reason="no_socket"`), never sent on
//!   another leg's socket.
//!
//! The scheduling logic ([`Schedule`]) is sans-IO and tested on a virtual clock; the thread
//! around it only sleeps, drains the inbox and calls `send_to`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::telemetry;

/// How long a call whose lock was busy waits before the clock tries it again. Short against a
/// 20 ms ptime (the frame still leaves well inside its slot) and long enough that the call task
/// holding the lock (queueing one delta's frames: microseconds) is done.
pub const BUSY_RETRY: Duration = Duration::from_micros(200);

/// Deadlines are rounded up to this grid so that calls due within one grain share a wake-up
/// (see [`Schedule`]). It divides every ptime (10, 20, 30, 40, 60 ms).
pub const WAKE_GRAIN: Duration = Duration::from_millis(1);

/// The clock thread's nice value, when the process may raise it (root or CAP_SYS_NICE): it ranks
/// the clock ahead of the gateway's own busy runtime workers, so a wake-up is not queued behind
/// a worker's time slice. Without the privilege the clock runs at the process's priority.
pub const CLOCK_THREAD_NICE: i32 = -10;

/// The window over which [`MediaClock::lateness`] summarises send lateness.
pub const LATENESS_WINDOW: Duration = Duration::from_secs(1);

/// One RTP packet a call wants sent now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpTransmit {
    /// The media leg whose socket sends it: 0 for the socket given to
    /// [`MediaClock::register`], others as attached ([`ClockRegistration::attach_socket`]).
    pub leg: u8,
    pub destination: SocketAddr,
    pub packet: Vec<u8>,
}

/// A call's media timing as the clock sees it (the call core, or today's bridge pacer).
///
/// The clock calls, under the call's lock: `handle_timeout(now)` when `poll_timeout()` is due,
/// then `poll_transmit()` until `None`, then `wants_task()` (true: wake the call's task, which
/// has outputs other than RTP to act on), then `poll_timeout()` for the next wake-up.
pub trait Paced: Send + 'static {
    /// Runs what is due at `now` (the pacer's slot).
    fn handle_timeout(&mut self, now: Instant);
    /// The next media deadline; `None`: nothing to pace until the task reschedules.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next packet to send now.
    fn poll_transmit(&mut self) -> Option<RtpTransmit>;
    /// Other outputs are waiting for the call's task.
    fn wants_task(&self) -> bool;
}

/// Send lateness (actual send time minus the deadline it was served for) over the last
/// completed [`LATENESS_WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatenessStats {
    /// Sequence number of the window (0: none completed yet), so a reader sees each one once.
    pub window: u64,
    /// Packets sent in the window.
    pub samples: u64,
    /// Upper bounds of the histogram bucket holding the percentile (so never under-stated).
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Packets dropped in the window because the socket buffer was full or the send failed.
    pub dropped: u64,
}

/// Bucket upper bounds, microseconds. Fine below the 2 ms target, coarse above it; the last
/// bucket holds everything later than 100 ms.
const BUCKET_BOUNDS_US: [u64; 17] =
    [50, 100, 250, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 50_000, 100_000];

/// A fixed-bucket lateness histogram: constant memory, constant time per sample.
#[derive(Debug, Clone, Default)]
pub struct LatenessHistogram {
    counts: [u64; BUCKET_BOUNDS_US.len() + 1],
    max: Duration,
    dropped: u64,
}

impl LatenessHistogram {
    pub fn record(&mut self, lateness: Duration) {
        let micros = u64::try_from(lateness.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_US.iter().position(|&bound| micros <= bound).unwrap_or(BUCKET_BOUNDS_US.len());
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += 1;
        }
        self.max = self.max.max(lateness);
    }

    pub fn record_dropped(&mut self) {
        self.dropped += 1;
    }

    /// The percentiles of what was recorded.
    pub fn stats(&self) -> LatenessStats {
        let samples: u64 = self.counts.iter().sum();
        LatenessStats {
            window: 0,
            samples,
            p50: self.quantile(samples, 50),
            p99: self.quantile(samples, 99),
            max: self.max,
            dropped: self.dropped,
        }
    }

    /// Upper bound of the bucket holding the `percent`-th percentile; the maximum seen for the
    /// overflow bucket.
    fn quantile(&self, samples: u64, percent: u64) -> Duration {
        if samples == 0 {
            return Duration::ZERO;
        }
        // Rank of the percentile, rounded up: the smallest count covering `percent` of samples.
        let rank = (samples * percent).div_ceil(100).max(1);
        let mut seen = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return match BUCKET_BOUNDS_US.get(index) {
                    Some(&bound) => Duration::from_micros(bound).min(self.max),
                    None => self.max,
                };
            }
        }
        self.max
    }
}

/// Identifies one registration inside the clock.
type Id = u64;

/// The most media legs (sockets) one registration may have: a caller and a bridged human,
/// with room to spare; attaching beyond it is refused (the inbox stays bounded).
pub const MAX_LEGS: u8 = 4;

/// What the clock needs to serve one call.
struct Entry {
    paced: Arc<Mutex<dyn Paced>>,
    /// Per leg (the index), the socket its packets leave on.
    sockets: Vec<Option<Arc<UdpSocket>>>,
    task: Arc<Notify>,
    /// Cleared by [`ClockRegistration`]'s drop: no new serve starts after it.
    active: Arc<AtomicBool>,
    /// The deadline the entry is scheduled for (`None`: not scheduled).
    scheduled: Option<Instant>,
    /// Bumped at every (re)scheduling: heap items of older generations are stale.
    generation: u64,
}

/// A heap item: wake at `at` to serve `id` for its deadline `due`. `at` is `due` rounded up to
/// the clock's grain, or later when a busy lock postponed it; lateness is measured against `due`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Wake {
    at: Instant,
    id: Id,
    generation: u64,
    due: Instant,
}

/// One packet ready to leave, with what the send needs.
pub struct Outgoing {
    socket: Arc<UdpSocket>,
    transmit: RtpTransmit,
    /// The deadline it was served for.
    due: Instant,
}

impl Outgoing {
    pub fn transmit(&self) -> &RtpTransmit {
        &self.transmit
    }

    pub fn due(&self) -> Instant {
        self.due
    }
}

/// Counts of one [`Schedule::serve`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Calls served (their `handle_timeout` ran).
    pub served: usize,
    /// Calls whose lock was busy: retried [`BUSY_RETRY`] later.
    pub busy: usize,
    /// Calls dropped because their lock was poisoned (their task panicked).
    pub poisoned: usize,
    /// Packets dropped because their leg had no socket (attached after, or detached before,
    /// the core produced them).
    pub no_socket: usize,
}

/// The clock's deadline heap and its registered calls (sans-IO: `now` is a parameter).
///
/// Deadlines are rounded up to a grid of `grain` from `epoch`, so calls whose slots fall within
/// one grain share a wake-up: 500 calls with random phases need at most 1,000 wake-ups a second
/// at a 1 ms grain instead of 25,000. A call's slots all sit at the same offset from the grid
/// (the grain divides the ptime), so the rounding is a constant delay per call, not jitter.
pub struct Schedule {
    epoch: Instant,
    grain: Duration,
    entries: HashMap<Id, Entry>,
    heap: BinaryHeap<Reverse<Wake>>,
}

impl Schedule {
    pub fn new(epoch: Instant, grain: Duration) -> Schedule {
        Schedule { epoch, grain, entries: HashMap::new(), heap: BinaryHeap::new() }
    }

    /// A new call is served at once: its first `handle_timeout` runs what is due and its
    /// `poll_timeout` then schedules it. (Reading `poll_timeout` here would need its lock,
    /// which its task may hold while it waits for the inbox this is drained from.)
    fn add(&mut self, id: Id, entry: Entry, now: Instant) {
        self.entries.insert(id, entry);
        self.set_deadline(id, Some(now));
    }

    /// Attaches (`Some`) or detaches (`None`) the socket of one of `id`'s legs.
    fn set_socket(&mut self, id: Id, leg: u8, socket: Option<Arc<UdpSocket>>) {
        let Some(entry) = self.entries.get_mut(&id) else { return };
        let index = usize::from(leg);
        if entry.sockets.len() <= index {
            entry.sockets.resize(index + 1, None);
        }
        if let Some(slot) = entry.sockets.get_mut(index) {
            *slot = socket;
        }
    }

    fn remove(&mut self, id: Id) {
        // Its heap items become stale and are discarded when they come up.
        self.entries.remove(&id);
        self.compact();
    }

    /// `due` rounded up to the grain (a deadline before the epoch is its own wake-up).
    fn wake_time(&self, due: Instant) -> Instant {
        let grain = self.grain.as_nanos();
        if grain == 0 || due <= self.epoch {
            return due;
        }
        let offset = (due - self.epoch).as_nanos();
        let rounded = offset.div_ceil(grain).saturating_mul(grain);
        u64::try_from(rounded).ok().and_then(|nanos| self.epoch.checked_add(Duration::from_nanos(nanos))).unwrap_or(due)
    }

    /// Moves `id`'s next wake-up to `deadline` (`None`: not scheduled).
    fn set_deadline(&mut self, id: Id, deadline: Option<Instant>) {
        let at = deadline.map(|due| self.wake_time(due));
        let Some(entry) = self.entries.get_mut(&id) else { return };
        if entry.scheduled == deadline {
            return;
        }
        entry.scheduled = deadline;
        entry.generation += 1;
        if let (Some(due), Some(at)) = (deadline, at) {
            self.heap.push(Reverse(Wake { at, id, generation: entry.generation, due }));
        }
        self.compact();
    }

    /// Stale heap items (rescheduled or removed entries) are dropped lazily; rebuild when they
    /// outnumber the live ones, so the heap stays bounded by twice the registrations.
    fn compact(&mut self) {
        if self.heap.len() <= 2 * self.entries.len() + 64 {
            return;
        }
        let entries = &self.entries;
        self.heap.retain(|Reverse(wake)| entries.get(&wake.id).is_some_and(|e| e.generation == wake.generation));
    }

    /// The earliest wake-up, stale items skipped.
    pub fn next_wake(&mut self) -> Option<Instant> {
        while let Some(Reverse(wake)) = self.heap.peek().copied() {
            if self.is_live(&wake) {
                return Some(wake.at);
            }
            self.heap.pop();
        }
        None
    }

    fn is_live(&self, wake: &Wake) -> bool {
        self.entries.get(&wake.id).is_some_and(|e| e.generation == wake.generation && e.active.load(Ordering::Acquire))
    }

    /// Registered calls.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Serves every call due at `now`, appending their packets to `out` (in wake-up order).
    pub fn serve(&mut self, now: Instant, out: &mut Vec<Outgoing>) -> ServeReport {
        let mut report = ServeReport::default();
        let mut postponed = Vec::new();
        let mut poisoned = Vec::new();
        while let Some(Reverse(wake)) = self.heap.peek().copied() {
            if wake.at > now {
                break;
            }
            self.heap.pop();
            if !self.is_live(&wake) {
                continue;
            }
            let Some(entry) = self.entries.get_mut(&wake.id) else { continue };
            let (next, wants_task) = match entry.paced.try_lock() {
                Ok(mut paced) => {
                    paced.handle_timeout(now);
                    while let Some(transmit) = paced.poll_transmit() {
                        match entry.sockets.get(usize::from(transmit.leg)) {
                            Some(Some(socket)) => {
                                out.push(Outgoing { socket: Arc::clone(socket), transmit, due: wake.due })
                            }
                            _ => report.no_socket += 1,
                        }
                    }
                    (paced.poll_timeout(), paced.wants_task())
                }
                Err(TryLockError::WouldBlock) => {
                    report.busy += 1;
                    postponed.push(Wake { at: now + BUSY_RETRY, ..wake });
                    continue;
                }
                Err(TryLockError::Poisoned(_)) => {
                    // The call's task panicked while holding its state: nothing sane to send.
                    report.poisoned += 1;
                    poisoned.push(wake.id);
                    continue;
                }
            };
            report.served += 1;
            if wants_task {
                entry.task.notify_one();
            }
            // Served: whatever comes next is a new scheduling, even for the same deadline.
            entry.scheduled = None;
            self.set_deadline(wake.id, next);
        }
        // Same generation: the postponed item stays the entry's live one.
        self.heap.extend(postponed.into_iter().map(Reverse));
        for id in poisoned {
            self.remove(id);
        }
        report
    }
}

/// Requests from the call tasks, drained by the clock at each wake-up. Bounded by the live
/// registrations (see the module doc).
#[derive(Default)]
struct Inbox {
    added: Vec<(Id, Entry)>,
    removed: Vec<Id>,
    /// Latest requested deadline per registration (coalesced).
    rescheduled: HashMap<Id, Option<Instant>>,
    /// Sockets attached (`Some`) or detached per registration and leg (coalesced: the latest
    /// wins; at most [`MAX_LEGS`] per registration).
    sockets: HashMap<(Id, u8), Option<Arc<UdpSocket>>>,
    /// When the clock will next wake on its own (`None`: it is awake or waits for a request).
    sleeping_until: Option<Instant>,
    stop: bool,
}

struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
    lateness: Mutex<LatenessStats>,
    registrations: AtomicU64,
    next_id: AtomicU64,
}

impl Shared {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the clock if `deadline` is earlier than when it plans to wake.
    fn wake_for(&self, inbox: &Inbox, deadline: Option<Instant>) {
        let earlier = match (deadline, inbox.sleeping_until) {
            (Some(deadline), Some(until)) => deadline < until,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if earlier {
            self.wake.notify_one();
        }
    }
}

/// The gateway's one media clock. Dropping the last `Arc` stops its thread.
pub struct MediaClock {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl MediaClock {
    /// Starts the clock's thread (`media-clock`).
    pub fn start() -> io::Result<Arc<MediaClock>> {
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
            lateness: Mutex::new(LatenessStats::default()),
            registrations: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("media-clock".into()).spawn(move || run(&thread_shared))?;
        Ok(Arc::new(MediaClock { shared, thread: Mutex::new(Some(thread)) }))
    }

    /// Serves `paced` from now on; sends its packets on `socket`; wakes `task` when
    /// [`Paced::wants_task`]. Dropping the returned registration stops it.
    pub fn register<P: Paced>(
        &self,
        paced: Arc<Mutex<P>>,
        socket: Arc<UdpSocket>,
        task: Arc<Notify>,
    ) -> ClockRegistration {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let active = Arc::new(AtomicBool::new(true));
        let paced: Arc<Mutex<dyn Paced>> = paced;
        let entry = Entry {
            paced,
            sockets: vec![Some(socket)],
            task,
            active: Arc::clone(&active),
            scheduled: None,
            generation: 0,
        };
        let mut inbox = self.shared.inbox();
        inbox.added.push((id, entry));
        // A new call's first deadline is usually now: wake the clock to look at it.
        self.shared.wake.notify_one();
        drop(inbox);
        self.shared.registrations.fetch_add(1, Ordering::Relaxed);
        ClockRegistration { shared: Arc::clone(&self.shared), id, active }
    }

    /// Send lateness over the last completed [`LATENESS_WINDOW`].
    pub fn lateness(&self) -> LatenessStats {
        *self.shared.lateness.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Calls registered now.
    pub fn registrations(&self) -> u64 {
        self.shared.registrations.load(Ordering::Relaxed)
    }
}

impl Drop for MediaClock {
    fn drop(&mut self) {
        self.shared.inbox().stop = true;
        self.shared.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            warn!("media clock thread panicked");
        }
    }
}

/// A call's place in the clock. Dropping it unregisters the call: no serve starts after the
/// drop (one already running may still send the packets it collected).
pub struct ClockRegistration {
    shared: Arc<Shared>,
    id: Id,
    active: Arc<AtomicBool>,
}

impl ClockRegistration {
    /// The call's task changed the paced state so that its next deadline is now `deadline`
    /// (e.g. audio queued into an idle core). Coalesced: only the latest request counts.
    pub fn reschedule(&self, deadline: Option<Instant>) {
        let mut inbox = self.shared.inbox();
        inbox.rescheduled.insert(self.id, deadline);
        self.shared.wake_for(&inbox, deadline);
    }

    /// Sends leg `leg`'s packets ([`RtpTransmit::leg`]) on `socket` from the clock's next
    /// wake-up on (woken now, so a leg added to the call just after is served with it).
    /// Returns false, attaching nothing, for a leg at or past [`MAX_LEGS`] or leg 0 (the
    /// registration's own socket).
    pub fn attach_socket(&self, leg: u8, socket: Arc<UdpSocket>) -> bool {
        if leg == 0 || leg >= MAX_LEGS {
            return false;
        }
        self.shared.inbox().sockets.insert((self.id, leg), Some(socket));
        self.shared.wake.notify_one();
        true
    }

    /// Stops sending leg `leg`'s packets (they are dropped and counted until the call stops
    /// producing them).
    pub fn detach_socket(&self, leg: u8) {
        if leg == 0 || leg >= MAX_LEGS {
            return;
        }
        self.shared.inbox().sockets.insert((self.id, leg), None);
    }
}

impl Drop for ClockRegistration {
    fn drop(&mut self) {
        self.active.store(false, Ordering::Release);
        let mut inbox = self.shared.inbox();
        inbox.rescheduled.remove(&self.id);
        inbox.sockets.retain(|(id, _), _| *id != self.id);
        inbox.removed.push(self.id);
        drop(inbox);
        self.shared.registrations.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The clock thread: drain the inbox, sleep to the earliest deadline, serve, send, repeat.
fn run(shared: &Shared) {
    // setpriority(PRIO_PROCESS, tid) sets one thread's nice on Linux.
    match rustix::process::setpriority_process(Some(rustix::thread::gettid()), CLOCK_THREAD_NICE) {
        Ok(()) => debug!(nice = CLOCK_THREAD_NICE, "media clock thread priority raised"),
        Err(e) => info!(error = %e, "media clock thread runs at normal priority (needs CAP_SYS_NICE to raise it)"),
    }
    let mut schedule = Schedule::new(Instant::now(), WAKE_GRAIN);
    let mut outgoing = Vec::new();
    let mut window = LatenessHistogram::default();
    let mut window_end = Instant::now() + LATENESS_WINDOW;
    let mut window_number = 0u64;
    let lateness_metric = metrics::histogram!(telemetry::RTP_SEND_LATENESS_SECONDS);
    let sent_metric = metrics::counter!(telemetry::RTP_PACKETS_TOTAL, "direction" => "out");
    let would_block_metric = metrics::counter!(telemetry::RTP_SEND_DROPPED_TOTAL, "reason" => "would_block");
    let error_metric = metrics::counter!(telemetry::RTP_SEND_DROPPED_TOTAL, "reason" => "error");
    let no_socket_metric = metrics::counter!(telemetry::RTP_SEND_DROPPED_TOTAL, "reason" => "no_socket");
    let busy_metric = metrics::counter!(telemetry::MEDIA_CLOCK_BUSY_RETRIES_TOTAL);
    let mut inbox = shared.inbox();
    loop {
        // Drain the inbox, then sleep until the earliest deadline (or the window's end, so the
        // published lateness is fresh even with no calls), unless a request came meanwhile.
        let now = loop {
            if inbox.stop {
                return;
            }
            for (id, entry) in inbox.added.drain(..) {
                schedule.add(id, entry, Instant::now());
            }
            for id in inbox.removed.drain(..) {
                schedule.remove(id);
            }
            for (id, deadline) in inbox.rescheduled.drain() {
                schedule.set_deadline(id, deadline);
            }
            for ((id, leg), socket) in inbox.sockets.drain() {
                schedule.set_socket(id, leg, socket);
            }
            let now = Instant::now();
            let wake_at = schedule.next_wake().map_or(window_end, |at| at.min(window_end));
            if wake_at <= now {
                inbox.sleeping_until = None;
                break now;
            }
            inbox.sleeping_until = Some(wake_at);
            inbox = match shared.wake.wait_timeout(inbox, wake_at - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        };
        drop(inbox);

        let report = schedule.serve(now, &mut outgoing);
        if report.busy > 0 {
            busy_metric.increment(report.busy as u64);
        }
        if report.no_socket > 0 {
            no_socket_metric.increment(report.no_socket as u64);
        }
        let mut sent = 0u64;
        for packet in outgoing.drain(..) {
            match packet.socket.send_to(&packet.transmit.packet, packet.transmit.destination) {
                Ok(_) => {
                    sent += 1;
                    let lateness = Instant::now().saturating_duration_since(packet.due);
                    window.record(lateness);
                    lateness_metric.record(lateness.as_secs_f64());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    window.record_dropped();
                    would_block_metric.increment(1);
                }
                Err(e) => {
                    window.record_dropped();
                    error_metric.increment(1);
                    debug!(error = %e, "RTP send failed");
                }
            }
        }
        sent_metric.increment(sent);

        let now = Instant::now();
        if now >= window_end {
            window_number += 1;
            let stats = LatenessStats { window: window_number, ..window.stats() };
            *shared.lateness.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = stats;
            window = LatenessHistogram::default();
            // Whole windows from the previous end; after a long stall, restart from now.
            window_end += LATENESS_WINDOW;
            if window_end <= now {
                window_end = now + LATENESS_WINDOW;
            }
        }
        inbox = shared.inbox();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_media::pacer::{Pacer, PacerConfig};
    use switchboard_media::rtp;

    const PTIME: Duration = Duration::from_millis(20);

    /// A real paced leg: the media crate's pacer, framed into RTP for one destination.
    struct PacedLeg {
        pacer: Pacer<u32>,
        destination: SocketAddr,
        ready: Vec<RtpTransmit>,
        served_at: Vec<Instant>,
        wants_task: bool,
    }

    impl PacedLeg {
        fn new(start: Instant, destination: SocketAddr, ssrc: u32) -> PacedLeg {
            let config =
                PacerConfig { payload_type: 0, ssrc, clock_rate: 8000, ptime: PTIME, silence: vec![0xFF; 160] };
            PacedLeg {
                pacer: Pacer::new(config, start, 0, 0),
                destination,
                ready: Vec::new(),
                served_at: Vec::new(),
                wants_task: false,
            }
        }
    }

    impl Paced for PacedLeg {
        fn handle_timeout(&mut self, now: Instant) {
            if self.pacer.next_deadline() <= now {
                self.served_at.push(now);
            }
            while let Some(frame) = self.pacer.poll(now) {
                let mut packet = Vec::new();
                rtp::write_rtp(&mut packet, &frame.header, &frame.payload);
                self.ready.push(RtpTransmit { leg: 0, destination: self.destination, packet });
            }
        }
        fn poll_timeout(&self) -> Option<Instant> {
            Some(self.pacer.next_deadline())
        }
        fn poll_transmit(&mut self) -> Option<RtpTransmit> {
            if self.ready.is_empty() { None } else { Some(self.ready.remove(0)) }
        }
        fn wants_task(&self) -> bool {
            self.wants_task
        }
    }

    fn socket() -> Arc<UdpSocket> {
        Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap())
    }

    fn sequence(packet: &[u8]) -> u16 {
        rtp::parse_rtp(packet).unwrap().0.sequence
    }

    fn ssrc(packet: &[u8]) -> u32 {
        rtp::parse_rtp(packet).unwrap().0.ssrc
    }

    fn add(schedule: &mut Schedule, id: Id, leg: &Arc<Mutex<PacedLeg>>) -> Arc<AtomicBool> {
        let active = Arc::new(AtomicBool::new(true));
        let paced: Arc<Mutex<dyn Paced>> = leg.clone();
        let entry = Entry {
            paced,
            sockets: vec![Some(socket())],
            task: Arc::new(Notify::new()),
            active: active.clone(),
            scheduled: None,
            generation: 0,
        };
        let registered_at = schedule.epoch;
        schedule.add(id, entry, registered_at);
        active
    }

    fn destination() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn every_due_call_is_served_in_one_wake_up_in_deadline_order() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, WAKE_GRAIN);
        // Three calls with slots offset by 0, 7 and 13 ms.
        let legs: Vec<_> = [0u64, 7, 13]
            .iter()
            .map(|&offset| {
                Arc::new(Mutex::new(PacedLeg::new(start + Duration::from_millis(offset), destination(), offset as u32)))
            })
            .collect();
        for (id, leg) in legs.iter().enumerate() {
            add(&mut schedule, id as Id, leg);
        }
        assert_eq!(schedule.next_wake(), Some(start));
        let mut out = Vec::new();
        // Simulate the thread: wake at each next deadline for one second of virtual time.
        let mut wake_ups = 0;
        while let Some(at) = schedule.next_wake() {
            if at > start + Duration::from_millis(999) {
                break;
            }
            let report = schedule.serve(at, &mut out);
            assert!(report.served >= 1);
            wake_ups += 1;
        }
        assert_eq!(out.len(), 150, "50 frames per call");
        assert_eq!(wake_ups, 150, "one wake-up per distinct deadline");
        // Every packet served exactly at its deadline, deadlines in order, per call in sequence.
        for pair in out.windows(2) {
            assert!(pair[0].due <= pair[1].due);
        }
        for offset in [0u32, 7, 13] {
            let sequences: Vec<u16> = out
                .iter()
                .filter(|o| ssrc(&o.transmit.packet) == offset)
                .map(|o| sequence(&o.transmit.packet))
                .collect();
            assert_eq!(sequences, (0..50).collect::<Vec<u16>>());
        }
        for leg in &legs {
            let leg = leg.lock().unwrap();
            for (n, at) in leg.served_at.iter().enumerate() {
                assert_eq!(*at, leg.served_at[0] + PTIME * n as u32, "served exactly on the slot");
            }
        }
    }

    #[test]
    fn slots_within_one_grain_share_a_wake_up_at_a_constant_offset() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, WAKE_GRAIN);
        // Phases 0.1, 0.4 and 0.9 ms past the grid: one wake-up at 1 ms serves all three.
        let phases = [100u64, 400, 900];
        let legs: Vec<_> = phases
            .iter()
            .map(|&us| Arc::new(Mutex::new(PacedLeg::new(start + Duration::from_micros(us), destination(), us as u32))))
            .collect();
        for (id, leg) in legs.iter().enumerate() {
            add(&mut schedule, id as Id, leg);
        }
        let mut out = Vec::new();
        let mut wake_ups = Vec::new();
        while let Some(at) = schedule.next_wake() {
            if at > start + Duration::from_millis(199) {
                break;
            }
            schedule.serve(at, &mut out);
            wake_ups.push(at - start);
        }
        // The look at registration, then one wake-up per ptime for the three calls.
        let expected: Vec<Duration> =
            std::iter::once(Duration::ZERO).chain((0..10u32).map(|n| WAKE_GRAIN + PTIME * n)).collect();
        assert_eq!(wake_ups, expected);
        assert_eq!(out.len(), 30);
        // Each call is served the same time after each of its slots: an offset, not jitter.
        for (leg, us) in legs.iter().zip(phases) {
            let leg = leg.lock().unwrap();
            let lateness: Vec<Duration> = leg
                .served_at
                .iter()
                .enumerate()
                .map(|(n, at)| *at - (start + Duration::from_micros(us) + PTIME * n as u32))
                .collect();
            assert!(lateness.iter().all(|l| *l == WAKE_GRAIN - Duration::from_micros(us)), "{lateness:?}");
        }
    }

    #[test]
    fn calls_due_together_share_one_wake_up() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, WAKE_GRAIN);
        let legs: Vec<_> = (0..100).map(|n| Arc::new(Mutex::new(PacedLeg::new(start, destination(), n)))).collect();
        for (id, leg) in legs.iter().enumerate() {
            add(&mut schedule, id as Id, leg);
        }
        let mut out = Vec::new();
        let report = schedule.serve(start + Duration::from_micros(300), &mut out);
        assert_eq!(report.served, 100);
        assert_eq!(out.len(), 100);
        assert_eq!(schedule.next_wake(), Some(start + PTIME));
    }

    #[test]
    fn removed_call_is_not_served_again() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, WAKE_GRAIN);
        let kept = Arc::new(Mutex::new(PacedLeg::new(start, destination(), 1)));
        let removed = Arc::new(Mutex::new(PacedLeg::new(start, destination(), 2)));
        add(&mut schedule, 1, &kept);
        let active = add(&mut schedule, 2, &removed);
        let mut out = Vec::new();
        schedule.serve(start, &mut out);
        assert_eq!(out.len(), 2);
        // The registration's drop clears `active` first (the inbox is drained later).
        active.store(false, Ordering::Release);
        out.clear();
        schedule.serve(start + PTIME, &mut out);
        assert_eq!(out.iter().map(|o| ssrc(&o.transmit.packet)).collect::<Vec<_>>(), [1]);
        schedule.remove(2);
        assert_eq!(schedule.len(), 1);
        out.clear();
        schedule.serve(start + PTIME * 2, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn busy_call_is_retried_not_skipped() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, WAKE_GRAIN);
        let leg = Arc::new(Mutex::new(PacedLeg::new(start, destination(), 1)));
        add(&mut schedule, 1, &leg);
        let mut out = Vec::new();
        {
            let _task_holds_it = leg.lock().unwrap();
            let report = schedule.serve(start, &mut out);
            assert_eq!((report.served, report.busy), (0, 1));
            assert!(out.is_empty());
            assert_eq!(schedule.next_wake(), Some(start + BUSY_RETRY));
        }
        let report = schedule.serve(start + BUSY_RETRY, &mut out);
        assert_eq!((report.served, report.busy), (1, 0));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].due, start, "lateness counts from the original deadline");
        assert_eq!(sequence(&out[0].transmit.packet), 0);
        assert_eq!(schedule.next_wake(), Some(start + PTIME));
    }

    #[test]
    fn reschedule_moves_the_wake_up_and_stale_items_are_skipped() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, WAKE_GRAIN);
        let leg = Arc::new(Mutex::new(PacedLeg::new(start + PTIME, destination(), 1)));
        add(&mut schedule, 1, &leg);
        // A new call is looked at once at registration, then at its own deadline.
        assert_eq!(schedule.next_wake(), Some(start));
        let mut out = Vec::new();
        assert_eq!(schedule.serve(start, &mut out).served, 1);
        assert!(out.is_empty(), "nothing due yet");
        assert_eq!(schedule.next_wake(), Some(start + PTIME));
        schedule.set_deadline(1, Some(start + PTIME * 5));
        assert_eq!(schedule.next_wake(), Some(start + PTIME * 5));
        assert_eq!(schedule.serve(start + PTIME * 2, &mut out).served, 0);
        schedule.set_deadline(1, None);
        assert_eq!(schedule.next_wake(), None);
        // Many reschedules never grow the heap past its bound.
        for n in 0..1000u32 {
            schedule.set_deadline(1, Some(start + Duration::from_micros(u64::from(n))));
        }
        assert!(schedule.heap.len() <= 2 * schedule.len() + 65);
    }

    #[test]
    fn wants_task_wakes_the_call_task() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, WAKE_GRAIN);
        let leg = Arc::new(Mutex::new(PacedLeg::new(start, destination(), 1)));
        leg.lock().unwrap().wants_task = true;
        let task = Arc::new(Notify::new());
        let paced: Arc<Mutex<dyn Paced>> = leg.clone();
        let entry = Entry {
            paced,
            sockets: vec![Some(socket())],
            task: task.clone(),
            active: Arc::new(AtomicBool::new(true)),
            scheduled: None,
            generation: 0,
        };
        schedule.add(1, entry, start);
        schedule.serve(start, &mut Vec::new());
        // The permit is stored: the task's next `notified()` completes at once.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), task.notified()).await.expect("task notified");
        });
    }

    /// A paced call whose every packet is for leg 1 (a bridged human's).
    struct SecondLeg(PacedLeg);

    impl Paced for SecondLeg {
        fn handle_timeout(&mut self, now: Instant) {
            self.0.handle_timeout(now);
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.0.poll_timeout()
        }
        fn poll_transmit(&mut self) -> Option<RtpTransmit> {
            self.0.poll_transmit().map(|t| RtpTransmit { leg: 1, ..t })
        }
        fn wants_task(&self) -> bool {
            false
        }
    }

    #[test]
    fn each_legs_packets_leave_on_that_legs_socket() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, WAKE_GRAIN);
        let leg = Arc::new(Mutex::new(SecondLeg(PacedLeg::new(start, destination(), 1))));
        let paced: Arc<Mutex<dyn Paced>> = leg;
        let caller_socket = socket();
        let entry = Entry {
            paced,
            sockets: vec![Some(Arc::clone(&caller_socket))],
            task: Arc::new(Notify::new()),
            active: Arc::new(AtomicBool::new(true)),
            scheduled: None,
            generation: 0,
        };
        schedule.add(1, entry, start);
        let mut out = Vec::new();
        // No socket for leg 1 yet: dropped and counted, never sent on the caller's socket.
        let report = schedule.serve(start, &mut out);
        assert_eq!((report.served, report.no_socket, out.len()), (1, 1, 0));
        let human_socket = socket();
        schedule.set_socket(1, 1, Some(Arc::clone(&human_socket)));
        schedule.serve(start + PTIME, &mut out);
        assert_eq!(out.len(), 1);
        assert!(Arc::ptr_eq(&out[0].socket, &human_socket));
        assert_eq!(out[0].transmit.leg, 1);
        // Detached: dropped again.
        schedule.set_socket(1, 1, None);
        out.clear();
        let report = schedule.serve(start + PTIME * 2, &mut out);
        assert_eq!((report.no_socket, out.len()), (1, 0));
        // Unknown registrations and legs past the end are ignored, not a panic.
        schedule.set_socket(9, 1, Some(socket()));
        schedule.set_socket(1, 3, None);
    }

    /// 200 calls with spread phases are all served, every slot, for `SERVE_SECONDS` (default 1)
    /// of virtual time; also the serve loop's cost under callgrind (docs/benchmarks.md, "the media
    /// clock's serve loop with a socket per leg").
    #[test]
    fn serve_cost() {
        let seconds: u64 = std::env::var("SERVE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
        let start = Instant::now();
        let mut schedule = Schedule::new(start, WAKE_GRAIN);
        let legs: Vec<_> = (0..200u32)
            .map(|n| {
                let phase = Duration::from_micros(u64::from(n) * 100);
                Arc::new(Mutex::new(PacedLeg::new(start + phase, destination(), n)))
            })
            .collect();
        for (id, leg) in legs.iter().enumerate() {
            add(&mut schedule, id as Id, leg);
        }
        let mut out = Vec::new();
        let end = start + Duration::from_secs(seconds);
        let mut packets = 0usize;
        while let Some(at) = schedule.next_wake() {
            if at > end {
                break;
            }
            schedule.serve(at, &mut out);
            packets += out.len();
            out.clear();
        }
        eprintln!("{packets} packets");
        assert!(packets >= 200 * 50 * seconds as usize);
    }

    #[test]
    fn histogram_percentiles_are_bucket_upper_bounds() {
        let mut histogram = LatenessHistogram::default();
        assert_eq!(histogram.stats(), LatenessStats::default());
        for _ in 0..98 {
            histogram.record(Duration::from_micros(80));
        }
        histogram.record(Duration::from_micros(1_800));
        histogram.record(Duration::from_millis(400));
        histogram.record_dropped();
        let stats = histogram.stats();
        assert_eq!(stats.samples, 100);
        assert_eq!(stats.p50, Duration::from_micros(100));
        assert_eq!(stats.p99, Duration::from_micros(2_000));
        assert_eq!(stats.max, Duration::from_millis(400));
        assert_eq!(stats.dropped, 1);
    }

    /// The real thread over loopback: packets arrive in order, no earlier than their slot, and
    /// stop once the registration is dropped; a busy lock delays frames but does not lose the call.
    #[test]
    fn clock_thread_sends_in_order_and_stops_on_unregister() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let clock = MediaClock::start().unwrap();
        let start = Instant::now() + Duration::from_millis(5);
        let leg = Arc::new(Mutex::new(PacedLeg::new(start, receiver.local_addr().unwrap(), 7)));
        let registration = clock.register(leg.clone(), socket(), Arc::new(Notify::new()));
        assert_eq!(clock.registrations(), 1);
        let mut buf = [0u8; 512];
        for n in 0..10u16 {
            let (len, _) = receiver.recv_from(&mut buf).unwrap();
            assert!(Instant::now() >= start + PTIME * u32::from(n), "never before its slot");
            assert_eq!(sequence(&buf[..len]), n);
        }
        // The call's task holds its lock across two slots: the clock retries, never gives up.
        {
            let _busy = leg.lock().unwrap();
            std::thread::sleep(PTIME * 2);
        }
        let (len, _) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!(sequence(&buf[..len]), 10, "served again after the lock was free");
        drop(registration);
        assert_eq!(clock.registrations(), 0);
        // Drain what was in flight, then nothing more arrives.
        receiver.set_read_timeout(Some(PTIME * 5)).unwrap();
        let mut after_drop = 0;
        while receiver.recv_from(&mut buf).is_ok() {
            after_drop += 1;
            assert!(after_drop < 5, "sends continued after unregistering");
        }
        let sent_before = leg.lock().unwrap().served_at.len();
        std::thread::sleep(PTIME * 3);
        assert_eq!(leg.lock().unwrap().served_at.len(), sent_before, "not served after unregistering");
    }
}
