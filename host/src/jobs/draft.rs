//! A schedule as a principal asks for it (`POST …/schedules`, `plughost schedule add`), checked
//! field by field before it becomes a record: each refusal names the field and what to send.
//! Whether the function it calls exists and may be called is the HTTP front's check.

use plughost_tenancy::schedules::ScheduleRecord;
use serde::Deserialize;
use serde_json::Value;

use super::schedule::Spec;

/// What `POST …/schedules` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Draft {
    pub name: String,
    pub cron: String,
    pub path: String,
    pub method: String,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub catch_up: bool,
}

/// Why a draft is refused: an error code and the reason.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Invalid {
    pub code: &'static str,
    pub why: String,
}

fn invalid(code: &'static str, why: impl Into<String>) -> Invalid {
    Invalid { code, why: why.into() }
}

/// Methods a schedule calls with.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

impl Draft {
    /// The record of a new schedule of `owner` (`admin` or `tenant`), first due at its next
    /// tick after `now`.
    pub(crate) fn into_record(self, owner: &str, owner_kind: &str, now: i64) -> Result<ScheduleRecord, Invalid> {
        let name_ok =
            !self.name.is_empty() && self.name.len() <= 64 && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(invalid(
                "BAD_SCHEDULE_NAME",
                format!("'{}' is not a schedule name: 1 to 64 letters, digits, '-', '_' or '.'", self.name),
            ));
        }
        if let Some(zone) = &self.timezone {
            if zone.parse::<chrono_tz::Tz>().is_err() {
                return Err(invalid(
                    "BAD_TIMEZONE",
                    format!("'{zone}' is not a time zone: use an IANA name such as Europe/Paris, or leave it out for UTC"),
                ));
            }
        }
        let spec = Spec::parse(&self.cron, self.timezone.as_deref()).map_err(|why| invalid("BAD_CRON", why))?;
        let method = self.method.trim().to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            return Err(invalid(
                "BAD_METHOD",
                format!("'{}' is not a method a schedule calls with: {}", self.method, METHODS.join(", ")),
            ));
        }
        let body = match self.body {
            None | Some(Value::Null) => None,
            Some(object @ Value::Object(_)) => Some(object.to_string()),
            Some(other) => {
                return Err(invalid(
                    "INVALID_JSON",
                    format!("\"body\" must be a JSON object (the kwargs of each call), not {other}"),
                ))
            }
        };
        Ok(ScheduleRecord {
            key: ScheduleRecord::key_of(owner, &self.name),
            id: uuid::Uuid::new_v4().to_string(),
            name: self.name,
            owner: owner.to_owned(),
            owner_kind: owner_kind.to_owned(),
            cron: self.cron.trim().to_owned(),
            timezone: self.timezone,
            path: target(&self.path)?,
            method,
            body,
            catch_up: self.catch_up,
            paused: false,
            created_at: now,
            next_run: spec.after(now),
            last_run: None,
            last_job: None,
            status: "ok".to_owned(),
        })
    }
}

/// The path called, without `/rest/services/`: `/rest/services/hello/greet/?name=x` and
/// `hello/greet/?name=x` are the same.
fn target(path: &str) -> Result<String, Invalid> {
    let path = path.trim();
    let tail = match path.strip_prefix("/rest/services/") {
        Some(tail) => tail,
        None if path.starts_with('/') => {
            return Err(invalid(
                "BAD_PATH",
                format!("'{path}' is not under /rest/services/: a schedule calls a function"),
            ))
        }
        None => path,
    };
    if tail.is_empty() || tail.len() > 2048 {
        return Err(invalid(
            "BAD_PATH",
            "name the function to call: /rest/services/<module>/<function>/… (at most 2048 characters)",
        ));
    }
    Ok(tail.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> Draft {
        Draft {
            name: "nightly".into(),
            cron: "0 3 * * *".into(),
            path: "/rest/services/hello/greet/?name=x".into(),
            method: "get".into(),
            body: None,
            timezone: Some("Europe/Paris".into()),
            catch_up: true,
        }
    }

    #[test]
    fn a_good_draft_becomes_a_record_due_at_its_next_tick() {
        let record = draft().into_record("u1", "admin", 0).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (record.key.as_str(), record.path.as_str(), record.method.as_str()),
            ("u1/nightly", "hello/greet/?name=x", "GET")
        );
        assert_eq!(record.next_run, 2 * 3600 * 1000, "03:00 in Paris on 1 January 1970 is 02:00 UTC");
        assert!(record.catch_up && !record.paused);
    }

    #[test]
    fn each_bad_field_is_named() {
        type Change = fn(&mut Draft);
        let cases: [(Change, &str); 6] = [
            (|d| d.name = "a b".into(), "BAD_SCHEDULE_NAME"),
            (|d| d.cron = "* *".into(), "BAD_CRON"),
            (|d| d.timezone = Some("Nowhere".into()), "BAD_TIMEZONE"),
            (|d| d.method = "BREW".into(), "BAD_METHOD"),
            (|d| d.body = Some(serde_json::json!([1])), "INVALID_JSON"),
            (|d| d.path = "/admin/x".into(), "BAD_PATH"),
        ];
        for (change, code) in cases {
            let mut d = draft();
            change(&mut d);
            assert_eq!(d.into_record("u", "admin", 0).err().map(|e| e.code), Some(code));
        }
    }
}
