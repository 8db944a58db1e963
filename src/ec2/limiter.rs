//! A client-side token bucket for mutating EC2 calls (EC2_API_QPS, EC2_API_BURST), so that one
//! node's agent never spends more than its share of the account's EC2 buckets; and its settings.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::core::settings::{ConfigError, Setting, Values};

/// EC2_API_QPS.
pub const EC2_API_QPS: Setting = Setting::new(
    "EC2_API_QPS",
    "0.01",
    "client-side sustained rate of mutating EC2 calls, per second",
);
/// EC2_API_BURST.
pub const EC2_API_BURST: Setting = Setting::new(
    "EC2_API_BURST",
    "40",
    "client-side burst of mutating EC2 calls",
);
/// The limiter's settings.
pub const SETTINGS: &[Setting] = &[EC2_API_QPS, EC2_API_BURST];

/// The limiter's rate and burst, validated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LimiterConfig {
    /// EC2_API_QPS.
    pub qps: f64,
    /// EC2_API_BURST.
    pub burst: u32,
}

impl LimiterConfig {
    /// Reads EC2_API_QPS and EC2_API_BURST from `v`.
    pub fn from_lookup(v: &Values) -> Result<Self, ConfigError> {
        let text = v.value(&EC2_API_QPS).unwrap_or_default();
        let qps = text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|q| q.is_finite() && (0.01..=1000.0).contains(q))
            .ok_or_else(|| {
                ConfigError::new(
                    EC2_API_QPS.var,
                    text,
                    "set a number of calls per second from 0.01 to 1000",
                )
            })?;
        Ok(Self {
            qps,
            burst: v.positive_count(&EC2_API_BURST, 10_000)?,
        })
    }

    /// A limiter with these settings, full.
    pub fn limiter(&self) -> Limiter {
        Limiter::new(self.qps, self.burst)
    }
}

/// Token bucket; `acquire` waits for a token.
#[derive(Debug)]
pub struct Limiter {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Limiter {
    /// `qps` tokens per second, at most `burst` saved up; starts full.
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps: qps.max(1e-6),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token, waiting as long as needed. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let start = Instant::now();
        loop {
            let wait = {
                let mut s = self.state.lock().expect("limiter lock");
                let now = Instant::now();
                let refill = now.saturating_duration_since(s.1).as_secs_f64() * self.qps;
                s.0 = (s.0 + refill).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return start.elapsed();
                }
                Duration::from_secs_f64((1.0 - s.0) / self.qps)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let l = Limiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.acquire().await, Duration::ZERO);
        }
        // The 4th waits half a second (2 per second), the 5th another half.
        l.acquire().await;
        assert!(
            (t0.elapsed().as_secs_f64() - 0.5).abs() < 0.01,
            "{:?}",
            t0.elapsed()
        );
        l.acquire().await;
        assert!(
            (t0.elapsed().as_secs_f64() - 1.0).abs() < 0.01,
            "{:?}",
            t0.elapsed()
        );
        // Idle refills up to the burst only.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let t1 = Instant::now();
        for _ in 0..3 {
            l.acquire().await;
        }
        assert_eq!(t1.elapsed(), Duration::ZERO);
        l.acquire().await;
        assert!(t1.elapsed() >= Duration::from_millis(499));
    }
}
