//! Rate limits per key (governor's GCRA): per client on the public endpoints, and per
//! object key for re-signs after an origin refusal.
//!
//! A client is its peer address, or, when the peer is one of the trusted proxies, the
//! nearest address in `X-Forwarded-For` (or `Forwarded: for=`) that is not itself a
//! trusted proxy: anything further left was written by the client and proves nothing.
//! State of clients that are back to a full burst is dropped every few seconds, so the
//! memory held follows the clients active in the last seconds, not every client ever seen.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

/// governor's keyed limiter.
type Limiter<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// How often the state of idle keys is dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Rate-limit settings.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Sustained requests per second per client; 0 turns the limit off (default).
    pub requests_per_second: u32,
    /// Requests a client may make at once before the rate applies (default: one
    /// second's worth).
    pub burst: u32,
    /// Proxies whose forwarding headers are believed (CIDRs, e.g. `10.0.0.0/8`).
    pub trusted_proxies: Vec<IpNet>,
}

/// A GCRA limit per key (governor), whose idle keys' state is dropped every
/// [`PRUNE_EVERY`]: memory follows the keys active in the last seconds, not every key
/// ever seen. Used for clients and for re-signs per object key.
#[derive(Debug)]
pub(crate) struct KeyedLimiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: Limiter<K, C>,
    clock: C,
    /// Nanoseconds since the clock's start at the last pruning.
    last_pruned: AtomicU64,
    start: C::Instant,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K, DefaultClock> {
    pub(crate) fn new(quota: Quota) -> Self {
        Self::with_clock(quota, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> KeyedLimiter<K, C> {
    pub(crate) fn with_clock(quota: Quota, clock: C) -> Self {
        KeyedLimiter {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            start: clock.now(),
            clock,
            last_pruned: AtomicU64::new(0),
        }
    }

    /// `Err(retry_after)` when `key` is over its rate.
    pub(crate) fn check(&self, key: &K) -> Result<(), Duration> {
        self.prune_now_and_then();
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops the state of keys back to a full burst, at most every [`PRUNE_EVERY`]
    /// (one caller does it; the rest go on).
    fn prune_now_and_then(&self) {
        let now = self.clock.now().duration_since(self.start).as_u64();
        let last = self.last_pruned.load(Ordering::Relaxed);
        if now.saturating_sub(last) < PRUNE_EVERY.as_nanos() as u64 {
            return;
        }
        if self
            .last_pruned
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }

    /// Keys holding state now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter.len()
    }
}

/// The per-client limit of the public endpoints; `None` inside when off.
#[derive(Debug)]
pub(crate) struct ClientLimiter<C: Clock = DefaultClock> {
    limiter: Option<KeyedLimiter<IpAddr, C>>,
    trusted: Vec<IpNet>,
}

impl ClientLimiter<DefaultClock> {
    pub(crate) fn new(config: &RateLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> ClientLimiter<C> {
    pub(crate) fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        let limiter = NonZeroU32::new(config.requests_per_second).map(|rate| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(rate);
            KeyedLimiter::with_clock(Quota::per_second(rate).allow_burst(burst), clock)
        });
        ClientLimiter {
            limiter,
            trusted: config.trusted_proxies.clone(),
        }
    }

    /// Whether any limit is set (when not, nothing about the client is even looked at).
    pub(crate) fn enabled(&self) -> bool {
        self.limiter.is_some()
    }

    /// `Err(retry_after)` when `client` is over its rate.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Duration> {
        match &self.limiter {
            Some(limiter) => limiter.check(&client),
            None => Ok(()),
        }
    }

    /// Clients holding state now.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.limiter.as_ref().map_or(0, KeyedLimiter::len)
    }

    /// The client a request counts against.
    pub(crate) fn client_of(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let mut forwarded: Vec<IpAddr> = Vec::new();
        for value in req.headers().get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else { continue };
            forwarded.extend(
                value
                    .split(',')
                    .filter_map(|a| a.trim().parse::<IpAddr>().ok()),
            );
        }
        if forwarded.is_empty() {
            for value in req.headers().get_all("forwarded") {
                let Ok(value) = value.to_str() else { continue };
                forwarded.extend(value.split([',', ';']).filter_map(|part| {
                    let (name, value) = part.trim().split_once('=')?;
                    if !name.trim().eq_ignore_ascii_case("for") {
                        return None;
                    }
                    let value = value.trim().trim_matches('"');
                    let value = value
                        .strip_prefix('[')
                        .map_or(value, |v| v.split(']').next().unwrap_or(v));
                    value
                        .parse::<IpAddr>()
                        .ok()
                        .or_else(|| value.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok()))
                }));
            }
        }
        // Right to left: the first hop no trusted proxy vouches for.
        Some(
            forwarded
                .into_iter()
                .rev()
                .find(|ip| !self.is_trusted(*ip))
                .unwrap_or(peer),
        )
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use governor::clock::FakeRelativeClock;

    fn config(rate: u32, burst: u32, trusted: &[&str]) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_second: rate,
            burst,
            trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_burst_then_the_rate_with_a_retry_after() {
        let clock = FakeRelativeClock::default();
        let limiter = ClientLimiter::with_clock(&config(2, 3, &[]), clock.clone());
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(client).is_ok());
        }
        let wait = limiter.check(client).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(
            limiter.check("192.0.2.2".parse().unwrap()).is_ok(),
            "per client"
        );
        clock.advance(Duration::from_millis(500));
        assert!(limiter.check(client).is_ok());
        let off = ClientLimiter::with_clock(&config(0, 0, &[]), clock);
        for _ in 0..1000 {
            assert!(off.check(client).is_ok());
        }
    }

    /// A million distinct clients leave no state behind once they are idle.
    #[test]
    fn state_of_idle_clients_is_dropped() {
        let clock = FakeRelativeClock::default();
        let limiter = ClientLimiter::with_clock(&config(10, 10, &[]), clock.clone());
        for i in 0..1_000_000u32 {
            let ip = IpAddr::from(std::net::Ipv6Addr::from(u128::from(i)));
            assert!(limiter.check(ip).is_ok());
        }
        assert_eq!(limiter.clients(), 1_000_000);
        clock.advance(PRUNE_EVERY);
        assert!(limiter.check("192.0.2.9".parse().unwrap()).is_ok());
        assert!(limiter.clients() <= 1, "{} clients kept", limiter.clients());
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let limiter = ClientLimiter::new(&config(1, 1, &["10.0.0.0/8"]));
        let from = |peer: &str, headers: &[(&str, &str)]| {
            let mut req = TestRequest::default().peer_addr(format!("{peer}:4000").parse().unwrap());
            for (name, value) in headers {
                req = req.insert_header((*name, *value));
            }
            limiter
                .client_of(&req.to_http_request())
                .unwrap()
                .to_string()
        };
        let spoofed = [("x-forwarded-for", "203.0.113.7")];
        assert_eq!(
            from("198.51.100.1", &spoofed),
            "198.51.100.1",
            "untrusted peer"
        );
        assert_eq!(from("10.1.2.3", &spoofed), "203.0.113.7");
        // The client wrote the leftmost entry; the trusted proxy appended the real one.
        assert_eq!(
            from(
                "10.1.2.3",
                &[("x-forwarded-for", "1.2.3.4, 203.0.113.7, 10.9.9.9")]
            ),
            "203.0.113.7"
        );
        assert_eq!(
            from(
                "10.1.2.3",
                &[(
                    "forwarded",
                    "for=198.51.100.17;proto=https, for=\"[2001:db8::1]:4711\""
                )]
            ),
            "2001:db8::1"
        );
        assert_eq!(
            from("10.1.2.3", &[("x-forwarded-for", "garbage")]),
            "10.1.2.3"
        );
    }
}
