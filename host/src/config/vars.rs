//! Reading variables: each value trimmed, its default taken from [`super::KNOWN_VARS`] (the one
//! place defaults are written), and every problem collected rather than the first returned.

use std::time::Duration;

use super::KNOWN_VARS;

/// The variables being read, and the problems found so far.
pub struct Vars<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    pub errors: Vec<String>,
}

/// The default of `key` (`URL_PARM3` → `parm_3`); empty for a variable with none.
pub fn default_of(key: &str) -> String {
    if let Some(n) = key.strip_prefix("URL_PARM").filter(|n| n.parse::<u32>().is_ok()) {
        return format!("parm_{n}");
    }
    let known = KNOWN_VARS.iter().find(|(name, _, _)| *name == key);
    debug_assert!(known.is_some(), "{key} is read but not listed in KNOWN_VARS");
    known.map(|(_, default, _)| (*default).to_owned()).unwrap_or_default()
}

impl<'a> Vars<'a> {
    pub fn new(get: &'a dyn Fn(&str) -> Option<String>) -> Vars<'a> {
        Vars { get, errors: Vec::new() }
    }

    /// Whether `key` is set at all (to anything).
    pub fn is_set(&self, key: &str) -> bool {
        (self.get)(key).is_some()
    }

    /// `key`'s value, trimmed, or its default when it is unset or blank.
    pub fn text(&self, key: &str) -> String {
        (self.get)(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default_of(key))
    }

    pub fn error(&mut self, problem: String) {
        self.errors.push(problem);
    }

    /// `key` as a whole number from `min` to `max` (`_` allowed as a separator); `min` and a
    /// problem otherwise.
    pub fn number(&mut self, key: &str, min: u64, max: u64) -> u64 {
        let text = self.text(key);
        match text.replace('_', "").parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.error(format!("{key}={text} is not a whole number from {min} to {max}"));
                min
            }
        }
    }

    /// `key` as a number of milliseconds.
    pub fn millis(&mut self, key: &str, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.number(key, min, max))
    }

    /// `key` as a number of seconds.
    pub fn secs(&mut self, key: &str, min: u64, max: u64) -> Duration {
        Duration::from_secs(self.number(key, min, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_table_and_values_are_trimmed() {
        let get = |key: &str| match key {
            "BIND" => Some("  0.0.0.0:80 ".to_owned()),
            "DATA_DIR" => Some("   ".to_owned()),
            _ => None,
        };
        let vars = Vars::new(&get);
        assert_eq!(vars.text("BIND"), "0.0.0.0:80");
        assert_eq!(vars.text("DATA_DIR"), "./data", "blank means the default");
        assert_eq!(vars.text("URL_PARM7"), "parm_7");
        assert!(vars.is_set("DATA_DIR"));
        assert!(!vars.is_set("PLUGINS_DIR"));
    }

    #[test]
    fn numbers_out_of_range_are_reported_with_their_bounds() {
        let get = |key: &str| (key == "CALL_TIMEOUT_MS").then(|| "0".to_owned());
        let mut vars = Vars::new(&get);
        assert_eq!(vars.millis("CALL_TIMEOUT_MS", 1, 3_600_000), Duration::from_millis(1));
        assert_eq!(vars.number("MAX_BODY_BYTES", 0, 1 << 34), 1_048_576);
        assert_eq!(vars.errors, ["CALL_TIMEOUT_MS=0 is not a whole number from 1 to 3600000"]);
    }
}
