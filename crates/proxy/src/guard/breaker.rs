//! A circuit breaker per upstream. Closed: everything goes through and outcomes are counted.
//! It opens after `consecutive_failures` failures in a row, or when the failure rate over the
//! last `window` reaches `failure_rate` (with at least `min_requests` outcomes in it). Open:
//! requests fail fast and the upstream gets no new sessions, for `open_for`. Then half-open: up
//! to `half_open_probes` requests go through as probes; a success closes it, a failure opens it
//! again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots the window is divided into.
const SLOTS: usize = 10;

/// Breaker settings (`[routes.breaker]`).
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Failures in a row that open it (0: this trigger is off).
    pub consecutive_failures: u32,
    /// Failure share over the window that opens it (0 < rate ≤ 1; 0: off).
    pub failure_rate: f64,
    /// The window of the failure rate.
    pub window: Duration,
    /// Outcomes the window needs before the rate counts.
    pub min_requests: u32,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Requests let through at once while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(30),
            min_requests: 20,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Probing whether the upstream recovered.
    HalfOpen,
    /// Failing fast.
    Open,
}

impl BreakerState {
    /// `closed`, `half-open`, `open`.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half-open",
            BreakerState::Open => "open",
        }
    }
    /// 0 closed, 1 half-open, 2 open (the metrics gauge).
    pub fn gauge(self) -> u8 {
        self as u8
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Which window slot period this slot holds (period index since the epoch).
    period: u64,
    ok: u32,
    failed: u32,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive: u32,
    slots: [Slot; SLOTS],
    /// When it opened (Open), or when the last probe was admitted (HalfOpen).
    since: Instant,
    probes: u32,
}

/// Where a breaker reads the time (tests move it by hand).
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// One upstream's breaker.
#[derive(Debug)]
pub struct Breaker<C: Clock = SystemClock> {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
    epoch: Instant,
    opened: AtomicU64,
    clock: C,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker::with_clock(cfg, SystemClock)
    }
}

impl<C: Clock> Breaker<C> {
    /// A closed breaker reading the time from `clock`.
    pub fn with_clock(cfg: BreakerConfig, clock: C) -> Breaker<C> {
        let now = clock.now();
        Breaker {
            clock,
            cfg,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive: 0,
                slots: [Slot::default(); SLOTS],
                since: now,
                probes: 0,
            }),
            epoch: now,
            opened: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    fn period(&self, now: Instant) -> u64 {
        let slot = (self.cfg.window / SLOTS as u32).max(Duration::from_millis(1));
        (now.duration_since(self.epoch).as_nanos() / slot.as_nanos()) as u64
    }

    /// Open → half-open once `open_for` has passed.
    fn refresh(&self, i: &mut Inner, now: Instant) {
        if i.state == BreakerState::Open && now.duration_since(i.since) >= self.cfg.open_for {
            i.state = BreakerState::HalfOpen;
            i.probes = 0;
            i.since = now;
        }
        // Probes whose outcome never came (their client went away) free their slot after a while.
        if i.state == BreakerState::HalfOpen
            && i.probes > 0
            && now.duration_since(i.since) >= self.cfg.open_for
        {
            i.probes = 0;
            i.since = now;
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        let mut i = self.lock();
        self.refresh(&mut i, self.clock.now());
        i.state
    }

    /// Times it opened.
    pub fn opened_total(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// May a request go through now? `Err(wait)`: no, the breaker is open (or every probe slot
    /// is taken) for about `wait` more.
    pub fn admit(&self) -> Result<(), Duration> {
        let now = self.clock.now();
        let mut i = self.lock();
        self.refresh(&mut i, now);
        match i.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => Err(self.cfg.open_for.saturating_sub(now - i.since)),
            BreakerState::HalfOpen if i.probes < self.cfg.half_open_probes.max(1) => {
                i.probes += 1;
                i.since = now;
                Ok(())
            }
            BreakerState::HalfOpen => Err(self.cfg.open_for.saturating_sub(now - i.since)),
        }
    }

    /// While open: how long until it lets a probe through.
    pub fn retry_in(&self) -> Option<Duration> {
        let now = self.clock.now();
        let mut i = self.lock();
        self.refresh(&mut i, now);
        (i.state == BreakerState::Open).then(|| self.cfg.open_for.saturating_sub(now - i.since))
    }

    /// May a new session be placed on this upstream? (Not while open.)
    pub fn accepts_sessions(&self) -> bool {
        self.state() != BreakerState::Open
    }

    /// Count one outcome. Returns the new state when it changed.
    pub fn record(&self, ok: bool) -> Option<BreakerState> {
        let now = self.clock.now();
        let period = self.period(now);
        let mut i = self.lock();
        self.refresh(&mut i, now);
        let slot = &mut i.slots[(period % SLOTS as u64) as usize];
        if slot.period != period {
            *slot = Slot {
                period,
                ..Slot::default()
            };
        }
        if ok {
            slot.ok += 1;
            i.consecutive = 0;
        } else {
            slot.failed += 1;
            i.consecutive += 1;
        }
        let before = i.state;
        match i.state {
            BreakerState::HalfOpen if ok => {
                i.state = BreakerState::Closed;
                i.slots = [Slot::default(); SLOTS];
            }
            BreakerState::HalfOpen => self.open(&mut i, now),
            BreakerState::Closed if !ok && self.trips(&i, period) => self.open(&mut i, now),
            _ => {}
        }
        (i.state != before).then_some(i.state)
    }

    fn trips(&self, i: &Inner, period: u64) -> bool {
        let c = &self.cfg;
        if c.consecutive_failures > 0 && i.consecutive >= c.consecutive_failures {
            return true;
        }
        if c.failure_rate <= 0.0 {
            return false;
        }
        let live = i
            .slots
            .iter()
            .filter(|s| period.saturating_sub(s.period) < SLOTS as u64);
        let (ok, failed) = live.fold((0u64, 0u64), |(o, f), s| {
            (o + u64::from(s.ok), f + u64::from(s.failed))
        });
        let total = ok + failed;
        total >= u64::from(c.min_requests.max(1)) && failed as f64 / total as f64 >= c.failure_rate
    }

    fn open(&self, i: &mut Inner, now: Instant) {
        i.state = BreakerState::Open;
        i.since = now;
        i.probes = 0;
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A clock that only moves when told to.
    #[derive(Clone)]
    struct ManualClock {
        start: Instant,
        offset: Arc<Mutex<Duration>>,
    }

    impl ManualClock {
        fn new() -> Self {
            ManualClock {
                start: Instant::now(),
                offset: Arc::default(),
            }
        }

        fn advance(&self, by: Duration) {
            *self.offset.lock().unwrap() += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.start + *self.offset.lock().unwrap()
        }
    }

    fn quick(open_for: Duration) -> (Breaker<ManualClock>, ManualClock) {
        let clock = ManualClock::new();
        let b = Breaker::with_clock(
            BreakerConfig {
                consecutive_failures: 3,
                failure_rate: 0.5,
                window: Duration::from_secs(10),
                min_requests: 10,
                open_for,
                half_open_probes: 1,
            },
            clock.clone(),
        );
        (b, clock)
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_probe() {
        let (b, clock) = quick(Duration::from_millis(50));
        assert_eq!(b.record(false), None);
        assert_eq!(b.record(true), None, "a success resets the streak");
        assert_eq!(b.record(false), None);
        assert_eq!(b.record(false), None);
        assert_eq!(b.record(false), Some(BreakerState::Open));
        assert!(b.admit().is_err());
        assert!(!b.accepts_sessions());
        assert_eq!(b.opened_total(), 1);
        clock.advance(Duration::from_millis(49));
        assert_eq!(b.retry_in(), Some(Duration::from_millis(1)));
        assert!(b.admit().is_err(), "still open 1 ms before open_for");
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.accepts_sessions());
        assert!(b.admit().is_ok(), "one probe goes through");
        assert!(b.admit().is_err(), "only one probe at a time");
        assert_eq!(b.record(true), Some(BreakerState::Closed));
        assert!(b.admit().is_ok());
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let (b, clock) = quick(Duration::from_millis(30));
        for _ in 0..3 {
            b.record(false);
        }
        clock.advance(Duration::from_millis(30));
        assert!(b.admit().is_ok());
        assert_eq!(b.record(false), Some(BreakerState::Open));
        assert!(b.admit().is_err());
        assert_eq!(b.opened_total(), 2);
        assert_eq!(b.retry_in(), Some(Duration::from_millis(30)), "open anew");
    }

    #[test]
    fn a_probe_that_never_reports_frees_its_slot_after_open_for() {
        let (b, clock) = quick(Duration::from_millis(30));
        for _ in 0..3 {
            b.record(false);
        }
        clock.advance(Duration::from_millis(30));
        assert!(b.admit().is_ok(), "the probe");
        clock.advance(Duration::from_millis(29));
        assert!(b.admit().is_err(), "its slot is taken");
        clock.advance(Duration::from_millis(1));
        assert!(b.admit().is_ok(), "a lost probe's slot is free again");
    }

    #[test]
    fn opens_on_the_failure_rate_only_with_enough_requests() {
        let b = Breaker::new(BreakerConfig {
            consecutive_failures: 0,
            failure_rate: 0.5,
            window: Duration::from_secs(60),
            min_requests: 10,
            open_for: Duration::from_secs(60),
            half_open_probes: 1,
        });
        // Alternating: 50% failures, but never 3 in a row.
        for n in 0..9 {
            assert_eq!(b.record(n % 2 == 0), None, "outcome {n}");
        }
        assert_eq!(b.state(), BreakerState::Closed, "9 outcomes < min_requests");
        assert_eq!(b.record(false), Some(BreakerState::Open));
    }
}
