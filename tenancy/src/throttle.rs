//! How many wrong TOTP codes a client may send for a UUID before its attempts are refused
//! unheard, and how a client that sprays wrong codes is slowed down.
//!
//! The threat: UUIDs identify, they are not secret, and a 6-digit code with one step of skew is
//! guessed with probability 3 in a million per try. Clients are told apart by address (an IPv4
//! address, or an IPv6 /64); everything is counted in this process (each replica counts its own):
//! - a client with `max` failures for a UUID in the window is refused (429) for that UUID before
//!   its code is checked: it locks out only itself, and only for that UUID;
//! - a UUID with `max * UUID_FACTOR` failures in the window, from any clients, is refused to the
//!   clients that failed for it, and still checked for every other: someone else's failures
//!   never lock the owner out, and once the UUID's budget is spent an attacker gets about one
//!   try per fresh address per window;
//! - a client with `max * SPRAY_FACTOR` failures in the window, whatever the UUIDs, has each
//!   further failure answered after a delay that grows to `MAX_DELAY`: slowed, never refused,
//!   and a valid proof is never delayed.
//!
//! Each attempt costs O(1): entries live in two generations of maps, and the older generation is
//! dropped whole once it is past the window, so nothing is ever scanned.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// A UUID's budget, in multiples of `max`.
pub const UUID_FACTOR: u32 = 10;
/// A client's budget over all UUIDs before its failures are answered late, in multiples of `max`.
pub const SPRAY_FACTOR: u32 = 100;
/// The longest a failed attempt of a client past its budget is held before its answer.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

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
    /// Failures of a client for a UUID.
    pairs: Generation<(Source, String)>,
    /// Failures for a UUID, from any client.
    uuids: Generation<String>,
    /// Failures of a client, for any UUID.
    sources: Generation<Source>,
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
                pairs: Generation::default(),
                uuids: Generation::default(),
                sources: Generation::default(),
                rotated: Instant::now(),
            }),
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        let mut books = self.books.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if books.rotated.elapsed() >= self.window {
            books.pairs.rotate();
            books.uuids.rotate();
            books.sources.rotate();
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
        let Some(pair) = books.pairs.get(&(source, uuid.to_owned()), self.window) else {
            // A client that never failed for this UUID is always heard.
            return Ok(());
        };
        if pair.failures >= self.max {
            return Err(self.retry_after(pair.since));
        }
        match books.uuids.get(&uuid.to_owned(), self.window) {
            Some(count) if count.failures >= self.max.saturating_mul(UUID_FACTOR) => Err(self.retry_after(count.since)),
            _ => Ok(()),
        }
    }

    /// Counts a failed proof. `Err(seconds)` when it spent the client's budget for the UUID
    /// (answer 429); otherwise how long to hold the answer (zero unless the client sprays).
    pub fn failed(&self, uuid: &str, source: Source) -> Result<Duration, u64> {
        let mut books = self.books();
        books.uuids.add(&uuid.to_owned(), self.window);
        let overall = books.sources.add(&source, self.window);
        let pair = books.pairs.add(&(source, uuid.to_owned()), self.window);
        if pair.failures > self.max {
            return Err(self.retry_after(pair.since));
        }
        let excess = overall.failures.saturating_sub(self.max.saturating_mul(SPRAY_FACTOR));
        Ok((Duration::from_millis(20) * excess).min(MAX_DELAY))
    }

    /// A valid proof: the client's slate for the UUID is clean, and so is the UUID's.
    pub fn succeeded(&self, uuid: &str, source: Source) {
        let mut books = self.books();
        books.pairs.clear(&(source, uuid.to_owned()));
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
    fn a_client_past_its_budget_is_refused_for_that_uuid_only_and_others_are_not() {
        let throttle = Throttle::new(3, Duration::from_secs(60));
        let attacker = ip("10.0.0.1");
        for _ in 0..3 {
            assert!(throttle.admit(UUID, attacker).is_ok());
            assert!(throttle.failed(UUID, attacker).is_ok());
        }
        assert!(throttle.admit(UUID, attacker).is_err());
        assert!(throttle.admit("another-uuid", attacker).is_ok(), "its other UUIDs are still heard");
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
    fn a_client_spraying_uuids_is_slowed_not_refused() {
        let throttle = Throttle::new(2, Duration::from_secs(60));
        let sprayer = ip("10.2.0.1");
        let mut delays = Vec::new();
        for n in 0..(2 * SPRAY_FACTOR + 150) {
            let uuid = format!("uuid-{n}");
            assert!(throttle.admit(&uuid, sprayer).is_ok());
            delays.push(throttle.failed(&uuid, sprayer).unwrap());
        }
        assert_eq!(delays[0], Duration::ZERO);
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
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
