//! Callbacks: when a job queued with `X-Callback-Url` ends, its record is POSTed there, signed.
//!
//! Which targets are allowed is the operator's choice (`CALLBACK_ALLOW`): host names or `*.`
//! suffixes, IP addresses and networks. A name is checked when the job is queued, and the
//! addresses it resolves to again at delivery: a name that resolves into a private, loopback or
//! link-local network is refused unless that network is allowed too, so that a tenant cannot
//! make the server call into its own network by pointing a name there. The connection goes to
//! the addresses checked, not to a second resolution.
//!
//! The body is signed with HMAC-SHA256 under a key derived from `SECRET_KEY`
//! (`plughost callback-key` prints it): `X-Plughost-Signature: t=<unix seconds>,v1=<hex>`, the
//! MAC of `<t>.<body>`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hmac::{Hmac, Mac};
use ipnet::IpNet;
use plughost_tenancy::jobs::JobRecord;
use sha2::Sha256;

use super::{runner::backoff, Jobs};

/// How long one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest callback URL accepted.
const MAX_URL: usize = 2048;

/// `CALLBACK_ALLOW`, parsed.
#[derive(Debug, Clone, Default)]
pub struct CallbackPolicy {
    /// Exact names (lowercase), `.suffix` for `*.suffix`, `*` for any name.
    names: Vec<String>,
    networks: Vec<IpNet>,
}

impl CallbackPolicy {
    /// Parses a comma-separated list; the error names the entry that is not a pattern.
    pub fn parse(text: &str) -> Result<CallbackPolicy, String> {
        let mut policy = CallbackPolicy::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Ok(network) = entry.parse::<IpNet>() {
                policy.networks.push(network);
            } else if let Ok(address) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                policy.networks.push(IpNet::from(address));
            } else if entry == "*" {
                policy.names.push("*".to_owned());
            } else {
                let (wild, name) = match entry.strip_prefix("*.") {
                    Some(rest) => (true, rest),
                    None => (false, entry),
                };
                let valid = !name.is_empty()
                    && name
                        .split('.')
                        .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
                if !valid {
                    return Err(format!(
                        "'{entry}' is not a host pattern: use a name (hooks.example.com), *.example.com, *, an address (127.0.0.1) or a network (10.0.0.0/8)"
                    ));
                }
                let name = name.to_ascii_lowercase();
                policy.names.push(if wild { format!(".{name}") } else { name });
            }
        }
        Ok(policy)
    }

    pub fn is_off(&self) -> bool {
        self.names.is_empty() && self.networks.is_empty()
    }

    /// Checks a callback URL when the job is queued: its scheme, and its host against the list.
    pub fn check_url(&self, text: &str) -> Result<reqwest::Url, String> {
        if self.is_off() {
            return Err(
                "this server delivers no callbacks (CALLBACK_ALLOW is empty): poll the job's status URL (Location) instead".to_owned(),
            );
        }
        if text.len() > MAX_URL {
            return Err(format!("X-Callback-Url is longer than {MAX_URL} characters"));
        }
        let url = reqwest::Url::parse(text).map_err(|err| format!("X-Callback-Url '{text}' is not a URL ({err})"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("X-Callback-Url must be http or https, not {}", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("X-Callback-Url must not carry credentials".to_owned());
        }
        let allowed = match url.host() {
            Some(url::Host::Domain(name)) => self.allows_name(name),
            Some(url::Host::Ipv4(address)) => self.allows_address(IpAddr::V4(address)),
            Some(url::Host::Ipv6(address)) => self.allows_address(IpAddr::V6(address)),
            None => false,
        };
        if !allowed {
            return Err(format!(
                "the callback host '{}' is not allowed by CALLBACK_ALLOW",
                url.host_str().unwrap_or("")
            ));
        }
        Ok(url)
    }

    fn allows_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.names
            .iter()
            .any(|pattern| pattern == "*" || *pattern == name || (pattern.starts_with('.') && name.ends_with(pattern.as_str())))
    }

    fn allows_address(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.networks.iter().any(|network| network.contains(&address))
    }

    /// Checks where a name resolved to: every address public, or in an allowed network.
    pub fn check_addresses(&self, addresses: &[SocketAddr]) -> Result<(), String> {
        if addresses.is_empty() {
            return Err("the callback host resolved to no address".to_owned());
        }
        match addresses
            .iter()
            .find(|a| !self.allows_address(a.ip()) && !is_public(canonical(a.ip())))
        {
            Some(refused) => Err(format!(
                "the callback host resolved to {}, which is not public and not in CALLBACK_ALLOW",
                refused.ip()
            )),
            None => Ok(()),
        }
    }
}

/// An IPv4 address mapped into IPv6 is the IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether an address is reachable on the public internet (not loopback, private, link-local,
/// shared, reserved, documentation or multicast).
fn is_public(address: IpAddr) -> bool {
    const NOT_PUBLIC: &[&str] = &[
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/3",
        "::/127",
        "64:ff9b:1::/48",
        "100::/64",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    ];
    !NOT_PUBLIC
        .iter()
        .filter_map(|net| net.parse::<IpNet>().ok())
        .any(|net| net.contains(&address))
}

/// `X-Plughost-Signature` for `body` sent at Unix second `at`.
pub(crate) fn signature(key: &CallbackKey, at: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length: this never fails.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&key.0) else {
        return String::new();
    };
    mac.update(at.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={at},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The key callbacks are signed with (never printed in debug output).
#[derive(Clone, Default)]
pub struct CallbackKey(pub [u8; 32]);

impl std::fmt::Debug for CallbackKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackKey(…)")
    }
}

/// How one delivery went.
enum Delivery {
    Delivered,
    /// Worth another try (the receiver failed or could not be reached).
    Retry(String),
    /// Not worth another (refused by the policy, or by the receiver with a 4xx).
    Final(String),
}

impl Jobs {
    /// Delivers the callback of a job that ended, retrying with back-off, in the background.
    pub(crate) fn deliver_callback(self: &Arc<Self>, job: JobRecord) {
        let Some(target) = job.callback_url.clone() else { return };
        let jobs = self.clone();
        tokio::spawn(async move {
            let body = serde_json::to_vec(&super::view(&job)).unwrap_or_default();
            let attempts = jobs.settings.callback_attempts;
            for attempt in 1..=attempts {
                let outcome = match deliver(&jobs.settings, &target, &job.id, &body).await {
                    Delivery::Delivered => {
                        count("delivered");
                        tracing::info!(job = %job.id, attempt, "callback delivered");
                        return;
                    }
                    Delivery::Final(why) => Err(why),
                    Delivery::Retry(why) if attempt == attempts => Err(why),
                    Delivery::Retry(why) => Ok(why),
                };
                match outcome {
                    Ok(why) => {
                        count("retried");
                        let wait = backoff(jobs.settings.backoff, i64::from(attempt));
                        tracing::info!(job = %job.id, attempt, "callback not delivered ({why}); trying again in {wait:?}");
                        tokio::time::sleep(wait).await;
                    }
                    Err(why) => {
                        count(if why.contains("CALLBACK_ALLOW") { "refused" } else { "failed" });
                        tracing::warn!(job = %job.id, attempt, "callback given up: {why}");
                        return;
                    }
                }
            }
        });
    }
}

fn count(outcome: &'static str) {
    crate::metrics::METRICS
        .callbacks
        .get_or_create(&crate::metrics::OutcomeLabels { outcome })
        .inc();
}

async fn deliver(settings: &super::JobSettings, target: &str, job_id: &str, body: &[u8]) -> Delivery {
    let url = match settings.callbacks.check_url(target) {
        Ok(url) => url,
        Err(why) => return Delivery::Final(why),
    };
    let Some(host) = url.host_str().map(str::to_owned) else {
        return Delivery::Final("the callback URL has no host".to_owned());
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(DELIVERY_TIMEOUT)
        .user_agent(concat!("plughost/", env!("CARGO_PKG_VERSION")));
    if let Some(url::Host::Domain(name)) = url.host() {
        let addresses: Vec<SocketAddr> = match tokio::net::lookup_host((name, port)).await {
            Ok(found) => found.collect(),
            Err(err) => return Delivery::Retry(format!("the callback host {host} could not be resolved: {err}")),
        };
        if let Err(why) = settings.callbacks.check_addresses(&addresses) {
            return Delivery::Final(why);
        }
        client = client.resolve_to_addrs(name, &addresses);
    }
    let client = match client.build() {
        Ok(client) => client,
        Err(err) => return Delivery::Retry(format!("no HTTP client: {err}")),
    };
    let at = super::now_ms().max(0) as u64 / 1000;
    let sent = client
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-plughost-job-id", job_id)
        .header("x-plughost-signature", signature(&settings.callback_key, at, body))
        .body(body.to_vec())
        .send()
        .await;
    match sent {
        Ok(answer) if answer.status().is_success() => Delivery::Delivered,
        Ok(answer) => {
            let status = answer.status();
            let why = format!("the receiver answered {status}");
            if status.is_server_error() || status == 408 || status == 429 {
                Delivery::Retry(why)
            } else {
                Delivery::Final(why)
            }
        }
        Err(err) => Delivery::Retry(format!("the receiver could not be reached: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> CallbackPolicy {
        CallbackPolicy::parse(text).unwrap_or_default()
    }

    #[test]
    fn names_match_exactly_or_by_suffix() {
        let p = policy("hooks.example.com, *.example.org");
        assert!(p.check_url("https://hooks.example.com/x").is_ok());
        assert!(p.check_url("https://HOOKS.example.com./x").is_ok());
        assert!(p.check_url("https://a.b.example.org/").is_ok());
        assert!(p.check_url("https://example.org/").is_err(), "*.x does not match x itself");
        assert!(p.check_url("https://evil-example.org/").is_err());
        assert!(p.check_url("https://hooks.example.com.evil.net/").is_err());
        assert!(p.check_url("http://127.0.0.1/").is_err(), "an address needs an address entry");
        assert!(p.check_url("ftp://hooks.example.com/").is_err());
        assert!(p.check_url("https://user:pw@hooks.example.com/").is_err());
    }

    #[test]
    fn addresses_need_an_address_or_network_entry() {
        let p = policy("127.0.0.1, 10.0.0.0/8, [::1]");
        assert!(p.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(p.check_url("http://10.2.3.4/").is_ok());
        assert!(p.check_url("http://[::1]:80/").is_ok());
        assert!(p.check_url("http://127.0.0.2/").is_err());
        assert!(p.check_url("http://example.com/").is_err());
    }

    #[test]
    fn a_name_resolving_into_a_private_network_is_refused_at_delivery() {
        let p = policy("*");
        let at = |text: &str| vec![SocketAddr::new(text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])), 80)];
        assert!(p.check_addresses(&at("93.184.216.34")).is_ok());
        for private in [
            "127.0.0.1",
            "10.1.1.1",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(p.check_addresses(&at(private)).is_err(), "{private}");
        }
        let p = policy("*, 127.0.0.0/8");
        assert!(p.check_addresses(&at("127.0.0.1")).is_ok());
        assert!(p.check_addresses(&[]).is_err());
    }

    #[test]
    fn empty_means_off_and_bad_entries_are_named() {
        assert!(policy("").is_off());
        assert!(policy("").check_url("https://example.com/").is_err());
        let err = CallbackPolicy::parse("ok.example.com, bad_name!").err().unwrap_or_default();
        assert!(err.contains("bad_name!"), "{err}");
    }

    #[test]
    fn the_signature_is_the_mac_of_time_dot_body() {
        // Computed independently: python3 -c 'import hmac; print(hmac.new(bytes([7]*32), b"1700000000.{}", "sha256").hexdigest())'
        let expected = "t=1700000000,v1=7b24748c9a3d39ed07b08d270a9c3b5ae3b420a0cba2eb3337b0fd8b739e40cd";
        assert_eq!(signature(&CallbackKey([7u8; 32]), 1_700_000_000, b"{}"), expected);
    }
}
