use serde::Deserialize;
use serde::de::IntoDeserializer;
use serde::de::value::{Error as DeError, StrDeserializer};

use super::*;

/// Reads `key = <literal>` the way the loader does, for one value.
fn toml<T: SettingValue>(literal: &str) -> Result<T, String> {
    let text = format!("key = {literal}");
    let document = toml::de::DeTable::parse(&text).unwrap();
    let value = document.get_ref().get("key").unwrap();
    T::read(Input::Toml(value.get_ref()))
}

fn text<T: SettingValue>(text: &str) -> Result<T, String> {
    T::read(Input::Text(text))
}

/// The spellings of as_str must be the ones the serde derives in settings.rs accept, since the
/// lead may deserialize these enums directly.
fn serde_agrees<T>(all: &[T])
where
    T: Copy + PartialEq + fmt::Debug + fmt::Display + for<'de> Deserialize<'de>,
{
    for variant in all {
        let spelled = variant.to_string();
        let deserializer: StrDeserializer<'_, DeError> = spelled.as_str().into_deserializer();
        assert_eq!(T::deserialize(deserializer).unwrap(), *variant, "{spelled}");
    }
}

#[test]
fn every_enum_spelling() {
    let sslmodes = [
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];
    for (spelling, mode) in sslmodes {
        assert_eq!(toml::<SslMode>(&format!("\"{spelling}\"")), Ok(mode));
        assert_eq!(text::<SslMode>(spelling), Ok(mode));
    }
    let auth = [
        ("trust", AuthType::Trust),
        ("md5", AuthType::Md5),
        ("scram-sha-256", AuthType::ScramSha256),
        ("cert", AuthType::Cert),
        ("hba", AuthType::Hba),
    ];
    for (spelling, auth_type) in auth {
        assert_eq!(text::<AuthType>(spelling), Ok(auth_type));
    }
    assert_eq!(text::<PoolMode>("session"), Ok(PoolMode::Session));
    assert_eq!(
        toml::<PoolMode>("\"transaction\""),
        Ok(PoolMode::Transaction)
    );
    assert_eq!(SslMode::ALL.len(), sslmodes.len());
    assert_eq!(AuthType::ALL.len(), auth.len());
    serde_agrees(SslMode::ALL);
    serde_agrees(AuthType::ALL);
    serde_agrees(PoolMode::ALL);
    serde_agrees(crate::config::CertIdentity::ALL);
    serde_agrees(crate::config::CrlExpired::ALL);
    serde_agrees(crate::config::CrlUnknownStatus::ALL);
    serde_agrees(crate::config::TargetSessionAttrs::ALL);
    serde_agrees(crate::config::LoadBalanceHosts::ALL);
    assert_eq!(
        text::<crate::config::CertIdentity>("san-uri"),
        Ok(crate::config::CertIdentity::SanUri)
    );
}

#[test]
fn bad_enum_values_list_the_choices() {
    let error = toml::<SslMode>("\"verify-fulll\"").unwrap_err();
    assert!(error.contains("`verify-fulll`"), "{error}");
    assert!(error.contains("verify-ca, verify-full"), "{error}");
    let error = text::<PoolMode>("statement").unwrap_err();
    assert!(error.contains("not supported"), "{error}");
    assert!(toml::<SslMode>("1").unwrap_err().contains("found integer"));
}

#[test]
fn seconds_from_integer_or_float_never_negative() {
    assert_eq!(toml::<Seconds>("15"), Ok(Seconds(15.0)));
    assert_eq!(toml::<Seconds>("0.5"), Ok(Seconds(0.5)));
    assert_eq!(toml::<Seconds>("1_000"), Ok(Seconds(1000.0)));
    assert_eq!(text::<Seconds>(" 2.5 "), Ok(Seconds(2.5)));
    assert!(toml::<Seconds>("-1").unwrap_err().contains("negative"));
    assert!(toml::<Seconds>("-0.5").unwrap_err().contains("negative"));
    assert!(toml::<Seconds>("inf").unwrap_err().contains("finite"));
    assert!(toml::<Seconds>("nan").unwrap_err().contains("finite"));
    assert!(toml::<Seconds>("1e300").unwrap_err().contains("too large"));
    assert!(
        toml::<Seconds>("\"15\"")
            .unwrap_err()
            .contains("found string")
    );
    assert!(text::<Seconds>("15s").is_err());
}

#[test]
fn integers_are_range_checked() {
    assert_eq!(toml::<u16>("7432"), Ok(7432));
    assert_eq!(toml::<u16>("0x1d00"), Ok(7424));
    assert!(toml::<u16>("70000").unwrap_err().contains("0 to 65535"));
    assert!(toml::<usize>("-1").is_err());
    assert!(
        toml::<usize>("\"20\"")
            .unwrap_err()
            .contains("expected an integer")
    );
    assert!(toml::<usize>("2.5").is_err());
    assert_eq!(text::<u16>("7432"), Ok(7432));
    assert!(text::<u32>("many").is_err());
}

#[test]
fn booleans() {
    assert_eq!(toml::<bool>("true"), Ok(true));
    assert!(toml::<bool>("1").unwrap_err().contains("true or false"));
    for yes in ["1", "true", "YES", "on"] {
        assert_eq!(text::<bool>(yes), Ok(true), "{yes}");
    }
    for no in ["0", "false", "no", "Off"] {
        assert_eq!(text::<bool>(no), Ok(false), "{no}");
    }
    assert!(text::<bool>("maybe").is_err());
}

#[test]
fn name_lists() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        toml::<Vec<String>>("[\"a\", \"b\"]"),
        Ok(names(&["a", "b"]))
    );
    assert_eq!(text::<Vec<String>>("a, b,,c "), Ok(names(&["a", "b", "c"])));
    assert_eq!(text::<Vec<String>>(""), Ok(vec![]));
    assert!(
        toml::<Vec<String>>("\"a,b\"")
            .unwrap_err()
            .contains("array")
    );
    assert!(toml::<Vec<String>>("[\"a\", 1]").is_err());
    assert!(toml::<Vec<String>>("[\"\"]").is_err());
}

#[test]
fn optional_paths() {
    assert_eq!(text::<Option<PathBuf>>(""), Ok(None));
    assert_eq!(text::<Option<PathBuf>>("a.crt"), Ok(Some("a.crt".into())));
    assert!(
        toml::<Option<PathBuf>>("\"\"")
            .unwrap_err()
            .contains("empty")
    );
    assert_eq!(None::<PathBuf>.to_value(), None);
}

#[test]
fn tls_protocols_in_pgbouncer_syntax() {
    use TlsVersion::{Tls12, Tls13};
    for both in [
        "secure",
        "all",
        "legacy",
        "default",
        "tlsv1.2,tlsv1.3",
        "TLSv1.3:tlsv1.2",
    ] {
        assert_eq!(parse_tls_protocols(both), Ok(vec![Tls12, Tls13]), "{both}");
    }
    assert_eq!(parse_tls_protocols("tlsv1.3"), Ok(vec![Tls13]));
    assert_eq!(parse_tls_protocols("all,!tlsv1.2"), Ok(vec![Tls13]));
    assert_eq!(
        parse_tls_protocols("secure !tlsv1.0"),
        Ok(vec![Tls12, Tls13])
    );
    assert_eq!(toml::<Vec<TlsVersion>>("\"tlsv1.3\""), Ok(vec![Tls13]));
    for old in ["tlsv1.0", "tlsv1.1", "tlsv1.1,tlsv1.2"] {
        let error = parse_tls_protocols(old).unwrap_err();
        assert!(error.contains("refused"), "{old}: {error}");
    }
    assert!(
        parse_tls_protocols("sslv3")
            .unwrap_err()
            .contains("unknown")
    );
    assert!(
        parse_tls_protocols("")
            .unwrap_err()
            .contains("no TLS protocol")
    );
    assert!(parse_tls_protocols("tlsv1.3,!tlsv1.3").is_err());
    assert_eq!(
        vec![Tls12, Tls13].to_value(),
        Some(Value::String("tlsv1.2,tlsv1.3".into()))
    );
}
