//! `redact-info-log`: user keys kept out of log lines and error messages, as TiKV's
//! setting of the same name does. Process-wide, set once when a node starts: a key
//! reaches a log line through many parts, and every one asks here.

use std::sync::atomic::{AtomicU8, Ordering};

/// How keys appear in log lines and error messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Setting")]
pub enum Redact {
    /// As they are (hexadecimal where not printable).
    #[default]
    Off,
    /// As `?`.
    On,
    /// Between `‹` and `›`, so a tool can strip them from logs before they are shared.
    Marker,
}

/// What the TOML may say: `true`, `false` or `"marker"`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Setting {
    Flag(bool),
    Word(String),
}

impl TryFrom<Setting> for Redact {
    type Error = String;

    fn try_from(setting: Setting) -> Result<Redact, String> {
        match setting {
            Setting::Flag(false) => Ok(Redact::Off),
            Setting::Flag(true) => Ok(Redact::On),
            Setting::Word(word) if word == "marker" => Ok(Redact::Marker),
            Setting::Word(word) => {
                Err(format!("redact-info-log must be true, false or \"marker\", not {word:?}"))
            }
        }
    }
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// Sets how keys appear from now on.
pub fn set(mode: Redact) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

fn mode() -> Redact {
    match MODE.load(Ordering::Relaxed) {
        1 => Redact::On,
        2 => Redact::Marker,
        _ => Redact::Off,
    }
}

/// `key` for a log line or an error message: `{}` prints it as `redact-info-log` says.
pub fn key(key: &[u8]) -> Key<'_> {
    Key(key)
}

/// A user key as `redact-info-log` lets it be shown.
pub struct Key<'a>(&'a [u8]);

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match mode() {
            Redact::On => f.write_str("?"),
            Redact::Marker => write!(f, "‹{}›", self.0.escape_ascii()),
            Redact::Off => write!(f, "{}", self.0.escape_ascii()),
        }
    }
}

impl std::fmt::Debug for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_show_as_the_setting_says() {
        #[derive(serde::Deserialize)]
        struct Doc {
            redact: Redact,
        }
        let parse = |text: &str| toml::from_str::<Doc>(text).map(|d| d.redact);
        assert_eq!(parse("redact = true").unwrap(), Redact::On);
        assert_eq!(parse("redact = false").unwrap(), Redact::Off);
        assert_eq!(parse("redact = \"marker\"").unwrap(), Redact::Marker);
        assert!(parse("redact = \"yes\"").unwrap_err().to_string().contains("not \"yes\""));
        let shown = |mode| {
            set(mode);
            format!("{}", key(b"user\x01"))
        };
        assert_eq!(shown(Redact::Off), "user\\x01");
        assert_eq!(shown(Redact::Marker), "‹user\\x01›");
        assert_eq!(shown(Redact::On), "?");
        set(Redact::Off);
    }
}
