//! How many wrong TOTP codes a client and a UUID may send before attempts are refused unheard.
//!
//! The threat: UUIDs identify, they are not secret, and a 6-digit code with one step of skew is
//! guessed with probability 3 in a million per try. The budget is counted per client address
//! (an IPv4 address, or an IPv6 /64) and per UUID, in this process (each replica counts its
//! own):
//! - a client with `max` failures in the window is refused (429) before its code is checked,
//!   whatever UUID it names: it slows only itself;
//! - a UUID with `max * UUID_FACTOR` failures in the window, from any clients, is refused to
//!   every client that has failed in the window, and still checked for every client that has
//!   not: someone else's failures never lock the owner out, and an attacker gets about one try
//!   per fresh address per window once the UUID's budget is spent.
//!
//! Each failure costs O(1): entries live in two generations of maps, and the older generation is
//! dropped whole once it is past the window, so nothing is ever scanned.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// A UUID's budget, in multiples of a client's.
pub const UUID_FACTOR: u32 = 10;

/// Where attempts come from: an IPv4 address, or the /64 an IPv6 address is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    /// Attempts with no known client (the CLI, tests of the library).
    pub const LOCAL: Source = Source(0);

    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u128::from(u32::from(v4))),
                None => Source((u128::from(v6) >> 64 << 64) | 1),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    since: Instant,
}

#[derive(Debug)]
struct Generation<K> {
    current: HashMap<K, Count>,
    previous: HashMap<K, Count>,
}

impl<K> Default for Generation<K> {
    fn default() -> Self {
        Generation {
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Generation<K> {
    /// The failures of `key` still inside the window.
    fn get(&self, key: &K, window: Duration) -> Option<Count> {
        self.current
            .get(key)
            .or_else(|| self.previous.get(key))
            .copied()
            .filter(|c| c.since.elapsed() < window)
    }

    /// Counts one more failure of `key`; returns the count.
    fn add(&mut self, key: &K, window: Duration) -> Count {
        let mut count = self.get(key, window).unwrap_or(Count {
            failures: 0,
            since: Instant::now(),
        });
        count.failures += 1;
        self.previous.remove(key);
        self.current.insert(key.clone(), count);
        count
    }

    fn clear(&mut self, key: &K) {
        self.current.remove(key);
        self.previous.remove(key);
    }

    /// Drops the older generation: every entry in it is at least one window old.
    fn rotate(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

#[derive(Debug)]
struct Books {
    sources: Generation<Source>,
    uuids: Generation<String>,
    rotated: Instant,
}

/// Failed proofs, by client and by UUID.
#[derive(Debug)]
pub struct Throttle {
    max: u32,
    window: Duration,
    books: Mutex<Books>,
}

impl Throttle {
    pub fn new(max: u32, window: Duration) -> Throttle {
        Throttle {
            max,
            window,
            books: Mutex::new(Books {
                sources: Generation::default(),
                uuids: Generation::default(),
                rotated: Instant::now(),
            }),
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        let mut books = self.books.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if books.rotated.elapsed() >= self.window {
            books.sources.rotate();
            books.uuids.rotate();
            books.rotated = Instant::now();
        }
        books
    }

    fn retry_after(&self, since: Instant) -> u64 {
        self.window.saturating_sub(since.elapsed()).as_secs().max(1)
    }

    /// `Err(seconds)` if an attempt from `source` for `uuid` is refused before its code is checked.
    pub fn admit(&self, uuid: &str, source: Source) -> Result<(), u64> {
        let books = self.books();
        let from_source = books.sources.get(&source, self.window);
        if let Some(count) = from_source.filter(|c| c.failures >= self.max) {
            return Err(self.retry_after(count.since));
        }
        if from_source.is_some() {
            if let Some(count) = books.uuids.get(&uuid.to_owned(), self.window) {
                if count.failures >= self.max.saturating_mul(UUID_FACTOR) {
                    return Err(self.retry_after(count.since));
                }
            }
        }
        Ok(())
    }

    /// Counts a failed proof; `Err(seconds)` when it spent the client's budget (answer 429).
    pub fn failed(&self, uuid: &str, source: Source) -> Result<(), u64> {
        let mut books = self.books();
        books.uuids.add(&uuid.to_owned(), self.window);
        let count = books.sources.add(&source, self.window);
        if count.failures > self.max {
            return Err(self.retry_after(count.since));
        }
        Ok(())
    }

    /// A valid proof: the client's slate is clean, and so is the UUID's.
    pub fn succeeded(&self, uuid: &str, source: Source) {
        let mut books = self.books();
        books.sources.clear(&source);
        books.uuids.clear(&uuid.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "6f1c1c3e-0000-4000-8000-000000000001";

    fn ip(text: &str) -> Source {
        Source::of(text.parse().unwrap())
    }

    #[test]
    fn a_client_past_its_budget_is_refused_and_others_are_not() {
        let throttle = Throttle::new(3, Duration::from_secs(60));
        let attacker = ip("10.0.0.1");
        for _ in 0..3 {
            assert!(throttle.admit(UUID, attacker).is_ok());
            assert!(throttle.failed(UUID, attacker).is_ok());
        }
        assert!(throttle.admit(UUID, attacker).is_err());
        assert!(throttle.admit(UUID, ip("10.0.0.2")).is_ok(), "the owner elsewhere is still heard");
    }

    #[test]
    fn a_uuid_past_its_budget_is_refused_only_to_clients_that_failed() {
        let throttle = Throttle::new(2, Duration::from_secs(60));
        for n in 0..(2 * UUID_FACTOR) {
            let source = ip(&format!("10.1.{}.{}", n / 256, n % 256));
            assert!(throttle.failed(UUID, source).is_ok());
        }
        assert!(throttle.admit(UUID, ip("10.1.0.0")).is_err(), "a client that failed is refused");
        assert!(throttle.admit(UUID, ip("192.0.2.7")).is_ok(), "a clean client is still checked");
        assert!(throttle.admit("another", ip("10.1.0.0")).is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:10.0.0.1"), ip("10.0.0.1"));
    }

    #[test]
    fn a_window_ends_and_success_clears() {
        let throttle = Throttle::new(1, Duration::from_millis(50));
        let source = ip("10.0.0.3");
        assert!(throttle.failed(UUID, source).is_ok());
        assert!(throttle.admit(UUID, source).is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(throttle.admit(UUID, source).is_ok());
        assert!(throttle.failed(UUID, source).is_ok());
        throttle.succeeded(UUID, source);
        assert!(throttle.admit(UUID, source).is_ok());
    }
}
