//! Settings as env vars, with one front door.
//!
//! Each domain declares its settings as [`Setting`] constants (the env var's name, its default
//! and a line of help) gathered in a table; the CLI makes a flag of each (`WARM_PREFIX_TARGET` →
//! `--warm-prefix-target`) and `--help` lists them from the same tables. Every entry point — the
//! CLI, the demo, the simulator, tests — fills a [`Values`] map and hands it to the domain's
//! `from_lookup`, which validates it into a typed config or a [`ConfigError`] that names the
//! variable. Nothing is replaced by a default in silence.

use std::collections::BTreeMap;
use std::time::Duration;

/// One setting: an env var (and the flag made from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The env var, e.g. `WARM_PREFIX_TARGET`.
    pub var: &'static str,
    /// Its default, as text; `None` when unset means something (see `unset`).
    pub default: Option<&'static str>,
    /// What an unset value means when there is no default, e.g. `from IMDS`.
    pub unset: &'static str,
    /// One line of help.
    pub help: &'static str,
}

impl Setting {
    /// A setting with a default.
    pub const fn new(var: &'static str, default: &'static str, help: &'static str) -> Self {
        Self {
            var,
            default: Some(default),
            unset: "",
            help,
        }
    }

    /// A setting that may be left unset; `unset` says what that means.
    pub const fn optional(var: &'static str, unset: &'static str, help: &'static str) -> Self {
        Self {
            var,
            default: None,
            unset,
            help,
        }
    }

    /// The flag: the name in lower case with dashes (`--warm-prefix-target`, without dashes).
    pub fn flag(&self) -> String {
        self.var.to_ascii_lowercase().replace('_', "-")
    }

    /// `VAR=default  help`, for `--help`.
    pub fn help_line(&self) -> String {
        let shown = match self.default {
            Some(d) if !d.is_empty() => format!("{}={d}", self.var),
            _ => format!("{}=({})", self.var, self.unset),
        };
        format!("  {shown:<40} {}", self.help)
    }
}

/// The `--help` text of a set of tables.
pub fn help(title: &str, tables: &[&[Setting]]) -> String {
    let mut out = format!("{title}:\n");
    for s in tables.iter().flat_map(|t| t.iter()) {
        out.push_str(&s.help_line());
        out.push('\n');
    }
    out
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is invalid: {why}")]
pub struct ConfigError {
    /// The env var (or flag) name.
    pub var: String,
    /// What it was set to.
    pub value: String,
    /// What is wrong and what is accepted.
    pub why: String,
}

impl ConfigError {
    /// An error for `var` set to `value`.
    pub fn new(var: &str, value: &str, why: impl Into<String>) -> Self {
        Self {
            var: var.to_owned(),
            value: value.to_owned(),
            why: why.into(),
        }
    }
}

/// Setting values by env var name: what a lookup reads. Absent names take their defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values(BTreeMap<String, String>);

impl Values {
    /// No values: every setting at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// `self` with `var` set.
    pub fn with(mut self, var: &str, value: impl Into<String>) -> Self {
        self.set(var, value);
        self
    }

    /// Sets `var`.
    pub fn set(&mut self, var: &str, value: impl Into<String>) {
        self.0.insert(var.to_owned(), value.into());
    }

    /// Whether `var` was given.
    pub fn contains(&self, var: &str) -> bool {
        self.0.contains_key(var)
    }

    /// The given value of `var`.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(String::as_str)
    }

    /// Pairs of names and values; a name that is in none of `tables` is refused as not a
    /// setting of `owner` (e.g. "agent"), listing the known ones.
    pub fn from_pairs<K: AsRef<str>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
        tables: &[&[Setting]],
        owner: &str,
    ) -> Result<Self, ConfigError> {
        let mut v = Self::new();
        for (k, val) in pairs {
            let k = k.as_ref();
            let val = val.into();
            if !tables.iter().flat_map(|t| t.iter()).any(|s| s.var == k) {
                let known: Vec<&str> = tables
                    .iter()
                    .flat_map(|t| t.iter())
                    .map(|s| s.var)
                    .collect();
                return Err(ConfigError::new(
                    k,
                    &val,
                    format!("{k} is not an {owner} setting; known: {}", known.join(", ")),
                ));
            }
            v.set(k, val);
        }
        Ok(v)
    }

    /// The settings of `tables` that the process environment sets.
    pub fn from_env(tables: &[&[Setting]]) -> Self {
        let mut v = Self::new();
        for s in tables.iter().flat_map(|t| t.iter()) {
            if let Ok(val) = std::env::var(s.var) {
                v.set(s.var, val);
            }
        }
        v
    }

    /// The value of `s`: given, else its default.
    pub fn value(&self, s: &Setting) -> Option<&str> {
        self.get(s.var).or(s.default)
    }

    fn text(&self, s: &Setting) -> &str {
        self.value(s).unwrap_or("")
    }

    /// A whole number from 0 to `max`.
    pub fn count(&self, s: &Setting, max: u32) -> Result<u32, ConfigError> {
        parse_count(s.var, self.text(s), max)
    }

    /// A whole number from 1 to `max`.
    pub fn positive_count(&self, s: &Setting, max: u32) -> Result<u32, ConfigError> {
        let n = self.count(s, max)?;
        if n == 0 {
            return Err(ConfigError::new(
                s.var,
                self.text(s),
                format!("must be at least 1 (1 to {max})"),
            ));
        }
        Ok(n)
    }

    /// `true` or `false`.
    pub fn bool(&self, s: &Setting) -> Result<bool, ConfigError> {
        parse_bool(s.var, self.text(s))
    }

    /// A duration (`500ms`, `30s`, `2m`, `1h`, bare seconds).
    pub fn duration(&self, s: &Setting) -> Result<Duration, ConfigError> {
        parse_duration(s.var, self.text(s))
    }

    /// A duration from `lo` to `hi`: every duration a setting takes has a sane range (a resync
    /// every 584 million years is a typo, not a wish).
    pub fn duration_in(
        &self,
        s: &Setting,
        lo: Duration,
        hi: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(s)?;
        if d < lo || d > hi {
            return Err(ConfigError::new(
                s.var,
                self.text(s),
                format!(
                    "out of range; set a duration from {} to {}",
                    show_duration(lo),
                    show_duration(hi)
                ),
            ));
        }
        Ok(d)
    }

    /// A duration longer than 0.
    pub fn positive_duration(&self, s: &Setting) -> Result<Duration, ConfigError> {
        let d = self.duration(s)?;
        if d.is_zero() {
            return Err(ConfigError::new(
                s.var,
                self.text(s),
                "must be longer than 0",
            ));
        }
        Ok(d)
    }

    /// Any value `T` parses from; `what` says what is accepted.
    pub fn parsed<T: std::str::FromStr>(&self, s: &Setting, what: &str) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let t = self.text(s);
        t.trim()
            .parse()
            .map_err(|e| ConfigError::new(s.var, t, format!("{e}; set {what}")))
    }

    /// `T` when set and not empty, else `None`.
    pub fn optional<T: std::str::FromStr>(
        &self,
        s: &Setting,
        what: &str,
    ) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.value(s).map(str::trim) {
            None | Some("") => Ok(None),
            Some(_) => self.parsed(s, what).map(Some),
        }
    }

    /// A comma-separated list of `T`; empty when unset.
    pub fn list<T: std::str::FromStr>(&self, s: &Setting, what: &str) -> Result<Vec<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let t = self.text(s);
        t.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse()
                    .map_err(|e| ConfigError::new(s.var, t, format!("{p:?}: {e}; set {what}")))
            })
            .collect()
    }
}

/// A whole number from 0 to `max`.
pub fn parse_count(var: &str, value: &str, max: u32) -> Result<u32, ConfigError> {
    let err = |why: String| ConfigError::new(var, value, why);
    let t = value.trim();
    if t.is_empty() {
        return Err(err(format!(
            "it is empty; set a whole number from 0 to {max}, or remove it for the default"
        )));
    }
    if t.len() > 1 && t.starts_with('-') && t[1..].bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!(
            "it is negative; set a whole number from 0 to {max}"
        )));
    }
    let n: u64 = t
        .parse()
        .map_err(|_| err(format!("not a whole number; set one from 0 to {max}")))?;
    if n > u64::from(max) {
        return Err(err(format!(
            "out of range; set a whole number from 0 to {max}"
        )));
    }
    Ok(n as u32)
}

/// `true` or `false` (any case).
pub fn parse_bool(var: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ConfigError::new(var, value, "set true or false")),
    }
}

/// A duration: `500ms`, `30s`, `2m`, `1h`, or bare seconds (`30`).
pub fn parse_duration(var: &str, value: &str) -> Result<Duration, ConfigError> {
    let err = || {
        ConfigError::new(
            var,
            value,
            "not a duration; write it as 500ms, 30s, 2m, 1h or bare seconds",
        )
    };
    let t = value.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(err());
    }
    let n: u64 = num.parse().map_err(|_| err())?;
    let ms = match unit {
        "" | "s" => n.checked_mul(1_000),
        "ms" => Some(n),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(err)?;
    Ok(Duration::from_millis(ms))
}

/// A duration as a setting is written: `0s`, `500ms`, `30s`, `2m`, `1h`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// Serializes a duration as `"1500ms"` (configs shown by `/v1/config`).
pub fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Setting = Setting::new("A_SETTING", "3", "a number");
    const B: Setting = Setting::optional("B_SETTING", "unset", "a list");

    #[test]
    fn values_defaults_and_unknown_names() {
        let v = Values::from_pairs([("A_SETTING", "7")], &[&[A, B]], "example").unwrap();
        assert_eq!(v.count(&A, 10).unwrap(), 7);
        assert_eq!(Values::new().count(&A, 10).unwrap(), 3);
        let e = Values::from_pairs([("NOPE", "1")], &[&[A, B]], "example").unwrap_err();
        assert_eq!(e.var, "NOPE");
        assert!(e.why.contains("A_SETTING, B_SETTING"), "{e}");
        assert_eq!(
            Values::new().list::<u32>(&B, "numbers").unwrap(),
            Vec::<u32>::new()
        );
        let e = Values::new()
            .with("B_SETTING", "1, x")
            .list::<u32>(&B, "numbers")
            .unwrap_err();
        assert!(e.to_string().starts_with("B_SETTING="), "{e}");
        assert_eq!(A.flag(), "a-setting");
        assert!(help("Env", &[&[A, B]]).contains("B_SETTING=(unset)"));
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration("X", s).unwrap();
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("2m"), Duration::from_secs(120));
        assert_eq!(d("45"), Duration::from_secs(45));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert!(parse_duration("X", "").is_err());
        assert!(parse_duration("X", "-1s").is_err());
        assert!(parse_duration("X", "99999999999999999999s").is_err());
    }
}
