//! How one setting's value is read (from a typed TOML value, or from the text of an environment
//! variable or a connection string) and written back. Every setting's type implements
//! [`SettingValue`]; the spellings of the enums and of `*_tls_protocols` live here.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use toml::Value;
use toml::de::DeValue;

use super::settings::{
    AuthType, CertIdentity, ChannelBinding, CrlExpired, CrlUnknownStatus, LoadBalanceHosts,
    PoolMode, Ports, Seconds, SessionState, SslMode, TargetSessionAttrs, TlsVersion,
};

/// Where a value comes from: TOML keeps its types, text (env, connection strings) is parsed.
#[derive(Clone, Copy)]
pub(crate) enum Input<'a> {
    Toml(&'a DeValue<'a>),
    Text(&'a str),
}

pub(crate) trait SettingValue: Sized {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String>;
    fn from_text(text: &str) -> Result<Self, String>;
    /// The value as TOML; `None` when the setting is not set.
    fn to_value(&self) -> Option<Value>;

    fn read(input: Input<'_>) -> Result<Self, String> {
        match input {
            Input::Toml(value) => Self::from_toml(value),
            Input::Text(text) => Self::from_text(text),
        }
    }
}

/// The text form of a TOML value, as an environment variable would spell it.
pub(crate) fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn wrong_type(expected: &str, found: &DeValue<'_>) -> String {
    format!("expected {expected}, found {}", found.type_str())
}

fn toml_str<'v>(value: &'v DeValue<'_>, expected: &str) -> Result<&'v str, String> {
    value.as_str().ok_or_else(|| wrong_type(expected, value))
}

impl SettingValue for String {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        toml_str(value, "a string").map(str::to_owned)
    }
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
    fn to_value(&self) -> Option<Value> {
        Some(Value::String(self.clone()))
    }
}

impl SettingValue for PathBuf {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        Self::from_text(toml_str(value, "a file path")?)
    }
    fn from_text(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the file path is empty (leave the setting out instead)".into());
        }
        Ok(PathBuf::from(text))
    }
    fn to_value(&self) -> Option<Value> {
        Some(Value::String(self.display().to_string()))
    }
}

/// Optional settings: an empty environment value unsets them (TOML has no null: leave them out).
impl<T: SettingValue> SettingValue for Option<T> {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        T::from_toml(value).map(Some)
    }
    fn from_text(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            Ok(None)
        } else {
            T::from_text(text).map(Some)
        }
    }
    fn to_value(&self) -> Option<Value> {
        self.as_ref().and_then(T::to_value)
    }
}

fn integer_in_range<T: TryFrom<i128>>(parsed: Option<i128>, max: u64) -> Result<T, String> {
    parsed
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("expected a whole number from 0 to {max}"))
}

macro_rules! integer_setting {
    ($($ty:ty),*) => {$(
        impl SettingValue for $ty {
            fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
                match value {
                    DeValue::Integer(n) => integer_in_range(
                        i128::from_str_radix(n.as_str(), n.radix()).ok(),
                        <$ty>::MAX as u64,
                    ),
                    other => Err(wrong_type("an integer", other)),
                }
            }
            fn from_text(text: &str) -> Result<Self, String> {
                integer_in_range(text.trim().parse::<i128>().ok(), <$ty>::MAX as u64)
            }
            fn to_value(&self) -> Option<Value> {
                Some(Value::Integer(i64::try_from(*self).unwrap_or(i64::MAX)))
            }
        }
    )*};
}
integer_setting!(u16, u32, usize);

/// `port = 5432` or, for a host list, `port = "5432,5433"` (libpq's spelling).
impl SettingValue for Ports {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        match value {
            DeValue::Integer(_) => u16::from_toml(value).map(|p| Ports(vec![p])),
            DeValue::String(text) => Ports::from_text(text),
            other => Err(wrong_type(
                "a port number or a list like \"5432,5433\"",
                other,
            )),
        }
    }
    fn from_text(text: &str) -> Result<Self, String> {
        let ports = text
            .split(',')
            .map(|p| u16::from_text(p).map_err(|_| format!("`{}` is not a port number", p.trim())))
            .collect::<Result<Vec<u16>, String>>()?;
        if ports.contains(&0) {
            return Err("port 0 is not a port to connect to".into());
        }
        Ok(Ports(ports))
    }
    fn to_value(&self) -> Option<Value> {
        Some(self.clone().into())
    }
}

impl SettingValue for bool {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        value
            .as_bool()
            .ok_or_else(|| wrong_type("true or false", value))
    }
    /// PgBouncer's ini files write booleans as 0/1; accept the usual spellings in text.
    fn from_text(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(format!(
                "expected true or false (or 1/0, yes/no, on/off), found `{text}`"
            )),
        }
    }
    fn to_value(&self) -> Option<Value> {
        Some(Value::Boolean(*self))
    }
}

impl Seconds {
    /// Refuses what `Duration` cannot hold, so `duration()` never panics on a loaded config.
    pub(crate) fn checked(value: f64) -> Result<Seconds, String> {
        if value.is_nan() || value.is_infinite() {
            return Err("expected a finite number of seconds".into());
        }
        if value < 0.0 {
            return Err(format!(
                "{value} is negative: use 0 to disable, or a positive number of seconds"
            ));
        }
        Duration::try_from_secs_f64(value)
            .map(|_| Seconds(value))
            .map_err(|_| format!("{value} seconds is too large"))
    }
}

impl SettingValue for Seconds {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        let number = match value {
            DeValue::Integer(n) => i128::from_str_radix(n.as_str(), n.radix())
                .map_err(|_| "the number is out of range".to_string())?
                as f64,
            DeValue::Float(f) => f
                .as_str()
                .parse::<f64>()
                .map_err(|_| format!("`{}` is not a number", f.as_str()))?,
            other => return Err(wrong_type("a number of seconds", other)),
        };
        Seconds::checked(number)
    }
    fn from_text(text: &str) -> Result<Self, String> {
        let number = text
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("expected a number of seconds, found `{text}`"))?;
        Seconds::checked(number)
    }
    fn to_value(&self) -> Option<Value> {
        // Whole seconds print as integers so the summary reads like a hand-written file.
        let whole = self.0.fract() == 0.0 && self.0.abs() < 9.0e15;
        Some(if whole {
            Value::Integer(self.0 as i64)
        } else {
            Value::Float(self.0)
        })
    }
}

impl SettingValue for Vec<String> {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const EXPECTED: &str = "an array of names, like [\"admin\"]";
        let items = value
            .as_array()
            .ok_or_else(|| wrong_type(EXPECTED, value))?;
        items
            .iter()
            .map(|item| match item.get_ref().as_str() {
                Some("") => Err("an empty name in the list".to_string()),
                Some(name) => Ok(name.to_owned()),
                None => Err(wrong_type(EXPECTED, item.get_ref())),
            })
            .collect()
    }
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect())
    }
    fn to_value(&self) -> Option<Value> {
        Some(Value::Array(
            self.iter().cloned().map(Value::String).collect(),
        ))
    }
}

impl SettingValue for Vec<TlsVersion> {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        parse_tls_protocols(toml_str(value, "a string like \"secure\" or \"tlsv1.3\"")?)
    }
    fn from_text(text: &str) -> Result<Self, String> {
        parse_tls_protocols(text)
    }
    fn to_value(&self) -> Option<Value> {
        let names: Vec<&str> = self.iter().map(|v| v.as_str()).collect();
        Some(Value::String(names.join(",")))
    }
}

/// PgBouncer's `*_tls_protocols` syntax (from libtls): versions and shortcuts separated by
/// commas, colons or spaces, a `!` prefix removing one. rustls has no TLS 1.0/1.1, so `all`
/// and `legacy` mean TLS 1.2 + 1.3 like `secure`, and naming 1.0/1.1 is refused.
pub fn parse_tls_protocols(text: &str) -> Result<Vec<TlsVersion>, String> {
    use TlsVersion::{Tls12, Tls13};
    let mut enabled = BTreeSet::new();
    let words = text.split(|c: char| c == ',' || c == ':' || c.is_whitespace());
    for word in words.filter(|w| !w.is_empty()) {
        let (remove, name) = match word.strip_prefix('!') {
            Some(name) => (true, name.to_ascii_lowercase()),
            None => (false, word.to_ascii_lowercase()),
        };
        let versions: &[TlsVersion] = match name.as_str() {
            "secure" | "default" | "all" | "legacy" => &[Tls12, Tls13],
            "tlsv1.2" => &[Tls12],
            "tlsv1.3" => &[Tls13],
            "tlsv1.0" | "tlsv1.1" if remove => &[],
            "tlsv1.0" | "tlsv1.1" => {
                return Err(format!(
                    "{name} is refused: TLS 1.0 and 1.1 are insecure and rustls does not \
                     implement them; use \"secure\" (TLS 1.2 and 1.3) or \"tlsv1.3\""
                ));
            }
            _ => {
                return Err(format!(
                    "unknown TLS protocol `{word}`, expected secure, all, tlsv1.2 or tlsv1.3 \
                     (comma separated)"
                ));
            }
        };
        for version in versions {
            if remove {
                enabled.remove(version);
            } else {
                enabled.insert(*version);
            }
        }
    }
    if enabled.is_empty() {
        return Err("no TLS protocol version is left enabled".into());
    }
    Ok(enabled.into_iter().collect())
}

/// One spelling per variant; the `Deserialize` derives in settings.rs must agree (tested).
macro_rules! spelled_enum {
    ($ty:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),*
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                $ty::ALL.iter().copied().find(|v| v.as_str() == text).ok_or_else(|| {
                    let expected: Vec<&str> = $ty::ALL.iter().map(|v| v.as_str()).collect();
                    format!("unknown value `{text}`, expected one of: {}", expected.join(", "))
                        + refusal_hint(text)
                })
            }
        }
    };
}

spelled_enum!(SslMode {
    Disable => "disable",
    Allow => "allow",
    Prefer => "prefer",
    Require => "require",
    VerifyCa => "verify-ca",
    VerifyFull => "verify-full",
});
spelled_enum!(PoolMode { Session => "session", Transaction => "transaction" });
spelled_enum!(ChannelBinding {
    Disable => "disable",
    Prefer => "prefer",
    Require => "require",
});
spelled_enum!(SessionState { Pin => "pin", Reset => "reset" });
spelled_enum!(AuthType {
    Trust => "trust",
    Md5 => "md5",
    ScramSha256 => "scram-sha-256",
    Cert => "cert",
    Hba => "hba",
});
spelled_enum!(CertIdentity {
    Cn => "cn",
    SanDns => "san-dns",
    SanUri => "san-uri",
    SanEmail => "san-email",
});
spelled_enum!(CrlExpired { Refuse => "refuse", Warn => "warn" });
spelled_enum!(CrlUnknownStatus {
    Refuse => "refuse",
    AllowIntermediate => "allow-intermediate",
    Allow => "allow",
});
spelled_enum!(TargetSessionAttrs {
    Any => "any",
    ReadWrite => "read-write",
    ReadOnly => "read-only",
    Primary => "primary",
    Standby => "standby",
    PreferStandby => "prefer-standby",
});
spelled_enum!(LoadBalanceHosts {
    Disable => "disable",
    RoundRobin => "round-robin",
    Random => "random",
});
spelled_enum!(TlsVersion { Tls12 => "tlsv1.2", Tls13 => "tlsv1.3" });

/// PgBouncer values pgmoat knows but deliberately does not offer.
fn refusal_hint(text: &str) -> &'static str {
    match text {
        "statement" => " (statement pooling is not supported)",
        "plain" => " (plain-text passwords on the wire are not supported)",
        "pam" | "any" | "ldap" => " (this PgBouncer auth_type is not supported)",
        _ => "",
    }
}

macro_rules! enum_setting {
    ($($ty:ty),*) => {$(
        impl SettingValue for $ty {
            fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
                toml_str(value, "a string")?.parse()
            }
            fn from_text(text: &str) -> Result<Self, String> {
                text.trim().parse()
            }
            fn to_value(&self) -> Option<Value> {
                Some(Value::String(self.as_str().to_owned()))
            }
        }
    )*};
}
enum_setting!(
    SslMode,
    PoolMode,
    AuthType,
    SessionState,
    ChannelBinding,
    CertIdentity,
    CrlExpired,
    CrlUnknownStatus,
    TargetSessionAttrs,
    LoadBalanceHosts
);

#[cfg(test)]
mod tests;
