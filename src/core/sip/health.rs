//! Next-hop health from OPTIONS probes, sans-IO: up after `rise` good answers in a row, down
//! after `fall` missed or bad ones in a row, or at once when the connection is lost (a member
//! we cannot reach cannot take requests).
//!
//! The shell calls `handle_timeout` when `poll_timeout` is due, sends a probe when told to,
//! and reports answers and connection changes. Time is always an argument.

use std::time::{Duration, Instant};

/// Probe settings (from the topology).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// A change of state worth logging and counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    WentUp,
    WentDown,
}

/// One member's health.
#[derive(Clone, Debug)]
pub struct Health {
    cfg: ProbeConfig,
    up: bool,
    connected: bool,
    good_streak: u32,
    bad_streak: u32,
    /// The probe in flight: its sequence number and when it counts as missed.
    pending: Option<(u32, Instant)>,
    next_probe: Instant,
    seq: u32,
}

impl Health {
    /// A member starts down and unconnected: it must earn `rise` good answers.
    pub fn new(now: Instant, cfg: ProbeConfig) -> Health {
        Health {
            cfg,
            up: false,
            connected: false,
            good_streak: 0,
            bad_streak: 0,
            pending: None,
            next_probe: now,
            seq: 0,
        }
    }

    /// Whether requests may be sent to this member.
    pub fn is_up(&self) -> bool {
        self.up && self.connected
    }

    /// Whether the connection to the member is up (whatever the probes say).
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Instant {
        match self.pending {
            Some((_, deadline)) => deadline,
            None => self.next_probe,
        }
    }

    /// Advances time. Returns the sequence number of a probe to send now, if one is due, and
    /// any transition caused by a missed probe.
    pub fn handle_timeout(&mut self, now: Instant) -> (Option<u32>, Option<Transition>) {
        let mut transition = None;
        if let Some((_, deadline)) = self.pending {
            if now < deadline {
                return (None, None);
            }
            self.pending = None;
            transition = self.record(false);
        }
        if now < self.next_probe || !self.connected {
            return (None, transition);
        }
        self.seq = self.seq.wrapping_add(1);
        self.pending = Some((self.seq, now + self.cfg.timeout));
        self.next_probe = now + self.cfg.interval;
        (Some(self.seq), transition)
    }

    /// An answer to probe `seq`. 5xx and 6xx are bad answers (the member is overloaded or
    /// refusing); any other final answer proves it alive. Stale answers are ignored.
    pub fn handle_answer(&mut self, seq: u32, status: u16) -> Option<Transition> {
        match self.pending {
            Some((pending, _)) if pending == seq && status >= 200 => {
                self.pending = None;
                self.record(status < 500)
            }
            _ => None,
        }
    }

    /// The connection to the member came up: probe at once.
    pub fn handle_connected(&mut self, now: Instant) {
        self.connected = true;
        self.pending = None;
        self.next_probe = now;
    }

    /// The connection was lost or could not be made.
    pub fn handle_disconnected(&mut self) -> Option<Transition> {
        let was_up = self.is_up();
        self.connected = false;
        self.pending = None;
        self.up = false;
        self.good_streak = 0;
        self.bad_streak = 0;
        was_up.then_some(Transition::WentDown)
    }

    fn record(&mut self, good: bool) -> Option<Transition> {
        if good {
            self.bad_streak = 0;
            self.good_streak = self.good_streak.saturating_add(1);
            if !self.up && self.good_streak >= self.cfg.rise {
                self.up = true;
                return Some(Transition::WentUp);
            }
        } else {
            self.good_streak = 0;
            self.bad_streak = self.bad_streak.saturating_add(1);
            if self.up && self.bad_streak >= self.cfg.fall {
                self.up = false;
                return Some(Transition::WentDown);
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start simulated time from a real instant
mod tests {
    use super::*;

    const CFG: ProbeConfig = ProbeConfig {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        rise: 2,
        fall: 3,
    };

    /// The sequence number of the probe `h` sends at `t` (one must be due).
    fn probe(h: &mut Health, t: Instant) -> u32 {
        let (Some(seq), _) = h.handle_timeout(t) else {
            panic!("no probe at {t:?}")
        };
        seq
    }

    /// What `h` makes of the probe it sends at `t` answered with `status`.
    fn answered(h: &mut Health, t: Instant, status: u16) -> Option<Transition> {
        let seq = probe(h, t);
        h.handle_answer(seq, status)
    }

    #[test]
    fn rise_and_fall_on_simulated_time() {
        let t0 = Instant::now();
        let mut h = Health::new(t0, CFG);
        assert_eq!(
            h.handle_timeout(t0),
            (None, None),
            "no probe before connecting"
        );
        h.handle_connected(t0);
        let (Some(s1), None) = h.handle_timeout(t0) else {
            panic!()
        };
        assert_eq!(
            h.handle_answer(s1, 200),
            None,
            "one good answer is not enough"
        );
        assert!(!h.is_up());
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(h.poll_timeout(), t5);
        assert_eq!(answered(&mut h, t5, 404), Some(Transition::WentUp));
        assert!(h.is_up());
        // Three misses in a row: down on the third.
        let mut t = t5;
        for i in 0..3 {
            t += Duration::from_secs(5);
            probe(&mut h, t);
            let (_, tr) = h.handle_timeout(t + Duration::from_secs(2));
            assert_eq!(tr, (i == 2).then_some(Transition::WentDown), "miss {i}");
        }
        assert!(!h.is_up());
    }

    #[test]
    fn bad_answers_and_disconnects() {
        let t0 = Instant::now();
        let cfg = ProbeConfig {
            rise: 1,
            fall: 1,
            ..CFG
        };
        let mut h = Health::new(t0, cfg);
        h.handle_connected(t0);
        let s = probe(&mut h, t0);
        assert_eq!(
            h.handle_answer(s, 100),
            None,
            "provisional answers do not count"
        );
        assert_eq!(
            h.handle_answer(s + 1, 200),
            None,
            "stale answers do not count"
        );
        assert_eq!(h.handle_answer(s, 200), Some(Transition::WentUp));
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(answered(&mut h, t5, 503), Some(Transition::WentDown));
        h.handle_connected(t5);
        assert_eq!(answered(&mut h, t5, 200), Some(Transition::WentUp));
        assert_eq!(h.handle_disconnected(), Some(Transition::WentDown));
        assert!(!h.is_up());
    }
}
