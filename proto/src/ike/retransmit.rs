//! Request retransmission (RFC 7296 2.1, 2.4).
//!
//! Only the initiator of an exchange retransmits; a responder answers a retransmitted request
//! with its cached response (RFC 7296 2.1). The schedule is strongSwan's, which operators know:
//! the n-th retransmission goes out `timeout * base^n` after the previous send
//! (defaults 4 s, 1.8, 5 tries: 4, 7.2, 13, 23.3, 42 s, then give up after 75.6 s more),
//! optionally with a little jitter drawn by the caller so that many members that started
//! together do not retransmit in lockstep.

use std::time::{Duration, Instant};

/// The retransmission schedule of one IKE SA.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetransmitPolicy {
    /// Delay before the first retransmission.
    pub timeout: Duration,
    /// Growth factor of the delay per retransmission.
    pub base: f64,
    /// Retransmissions before the exchange fails.
    pub tries: u32,
    /// Upper bound on any single delay.
    pub max_delay: Duration,
}

impl Default for RetransmitPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(4),
            base: 1.8,
            tries: 5,
            max_delay: Duration::from_secs(120),
        }
    }
}

impl RetransmitPolicy {
    /// Delay after the `n`-th send (0 = the original request) before the next action: a
    /// retransmission while `n < tries`, giving up when `n == tries`.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = self.base.max(1.0).powi(n.min(64) as i32);
        let secs = (self.timeout.as_secs_f64() * factor).min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(secs)
    }

    /// Total time from the first send until the exchange is given up.
    pub fn give_up_after(&self) -> Duration {
        (0..=self.tries).map(|n| self.delay(n)).sum()
    }
}

/// What the retransmission timer says when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetransmitAction {
    /// Send the cached request again.
    Resend,
    /// No answer after every try: the exchange (and the IKE SA) failed.
    GiveUp,
}

/// The state of one outstanding request.
#[derive(Debug, Clone)]
pub struct RetransmitTimer {
    policy: RetransmitPolicy,
    sent: u32,
    deadline: Instant,
}

impl RetransmitTimer {
    /// Starts the timer when the request is first sent.
    pub fn start(policy: RetransmitPolicy, now: Instant) -> Self {
        Self {
            policy,
            sent: 0,
            deadline: now + policy.delay(0),
        }
    }

    /// When [`RetransmitTimer::on_timeout`] should next be called.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// How many retransmissions have gone out.
    pub fn retransmissions(&self) -> u32 {
        self.sent
    }

    /// Called at or after the deadline. Returns `None` if called early.
    pub fn on_timeout(&mut self, now: Instant) -> Option<RetransmitAction> {
        if now < self.deadline {
            return None;
        }
        if self.sent >= self.policy.tries {
            return Some(RetransmitAction::GiveUp);
        }
        self.sent += 1;
        self.deadline = now + self.policy.delay(self.sent);
        Some(RetransmitAction::Resend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strongswan_schedule() {
        let p = RetransmitPolicy::default();
        let d: Vec<f64> = (0..=5).map(|n| p.delay(n).as_secs_f64()).collect();
        let want = [4.0, 7.2, 12.96, 23.328, 41.9904, 75.58272];
        for (a, b) in d.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{d:?}");
        }
        assert!((p.give_up_after().as_secs_f64() - 165.06112).abs() < 1e-4);
    }

    #[test]
    fn timer_resends_then_gives_up() {
        let p = RetransmitPolicy {
            tries: 2,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut t = RetransmitTimer::start(p, t0);
        assert_eq!(t.on_timeout(t0 + Duration::from_secs(3)), None);
        let mut now = t.deadline();
        assert_eq!(t.on_timeout(now), Some(RetransmitAction::Resend));
        now = t.deadline();
        assert_eq!(t.on_timeout(now), Some(RetransmitAction::Resend));
        now = t.deadline();
        assert_eq!(t.on_timeout(now), Some(RetransmitAction::GiveUp));
        assert_eq!(t.retransmissions(), 2);
    }

    #[test]
    fn delay_is_capped() {
        let p = RetransmitPolicy {
            max_delay: Duration::from_secs(10),
            ..Default::default()
        };
        assert_eq!(p.delay(30), Duration::from_secs(10));
    }
}
