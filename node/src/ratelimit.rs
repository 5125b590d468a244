//! Per-address rate limit on requests from clients (an IPv4 address or an IPv6 /64 each): a
//! token bucket per address, in a table of bounded size, so one sender cannot make a guard do
//! unbounded work while others are served.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use allium_link::ip_key;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets by client address.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    max_entries: usize,
    table: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// `per_sec` requests per second on average per address, up to `burst` at once; at most
    /// `max_entries` addresses tracked.
    pub fn new(per_sec: u32, burst: u32, max_entries: usize) -> Self {
        RateLimiter {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            max_entries: max_entries.max(1),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip` at `now`; false when its bucket is empty.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let key = ip_key(ip);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(&key) && table.len() >= self.max_entries {
            // Buckets that have refilled say nothing an empty table would not: forget them.
            let (per_sec, burst) = (self.per_sec, self.burst);
            table.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * per_sec < burst
            });
            if table.len() >= self.max_entries {
                // Every tracked address is busy: a flood from that many addresses is the
                // connection caps' to stop; memory stays bounded.
                return true;
            }
        }
        let b = table.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Addresses tracked.
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let rl = RateLimiter::new(10, 5, 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| rl.allow(ip, t0)).count(), 5);
        // 10 per second: one more token every 100 ms.
        assert!(rl.allow(ip, t0 + Duration::from_millis(100)));
        assert!(!rl.allow(ip, t0 + Duration::from_millis(100)));
        // Another address is not affected.
        assert!(rl.allow(IpAddr::from([192, 0, 2, 2]), t0));
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let rl = RateLimiter::new(1, 2, 100);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        assert!(rl.allow(a, t0));
        assert!(rl.allow(b, t0));
        assert!(!rl.allow(a, t0), "the /64's two tokens are spent");
        assert!(rl.allow(other, t0));
    }

    #[test]
    fn the_table_stays_bounded() {
        let rl = RateLimiter::new(1, 1, 64);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            rl.allow(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(rl.tracked() <= 64);
        // Once their buckets refill, old entries make room for new addresses.
        let later = t0 + Duration::from_secs(5);
        assert!(rl.allow(IpAddr::from([10, 0, 0, 1]), later));
        assert!(!rl.allow(IpAddr::from([10, 0, 0, 1]), later));
        assert!(rl.tracked() <= 64);
    }
}
