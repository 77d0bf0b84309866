//! Configuration mistakes are caught before pgmoat serves anyone: `pgmoat check-config` and
//! `pgmoat run` both refuse them, naming the file, the setting and the reason; a good config
//! checks out as "configuration OK". No PostgreSQL is needed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::*;

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("pgmoat.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn check_config(path: &Path) -> Output {
    pgmoat_command()
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap()
}

/// A config mistake, where it shows, and what must be said about it.
struct Mistake {
    name: &'static str,
    config: ConfigBuilder,
    /// The setting named in the error.
    key: &'static str,
    /// Words of the reason.
    reason: &'static str,
    /// The config line the error must point at: the first line setting this key.
    cited: Option<&'static str>,
    /// A file other than the config file the error must name (the bad key file).
    file: Option<PathBuf>,
}

fn mistakes(pki: &Pki) -> Vec<Mistake> {
    let base = || ConfigBuilder::for_port(pki, 5432);
    vec![
        Mistake {
            name: "unknown key",
            config: base().line("client_tls_sslmod = \"require\""),
            key: "client_tls_sslmod",
            reason: "unknown setting; did you mean `client_tls_sslmode`?",
            cited: Some("client_tls_sslmod"),
            file: None,
        },
        Mistake {
            name: "wrong type",
            config: base().set("default_pool_size", "\"ten\""),
            key: "default_pool_size",
            reason: "expected an integer, found string",
            cited: Some("default_pool_size"),
            file: None,
        },
        Mistake {
            name: "verify-ca without a CA",
            config: base()
                .client_sslmode("verify-ca")
                .unset("client_tls_ca_file"),
            key: "client_tls_ca_file",
            reason: "verify-ca needs a CA file",
            // The missing setting's place is the mode that needs it.
            cited: Some("client_tls_sslmode"),
            file: None,
        },
        Mistake {
            name: "cert auth without verified client certificates",
            config: base().auth_type("cert"),
            key: "auth_type",
            reason: "auth_type = cert needs client_tls_sslmode = verify-ca or verify-full",
            cited: Some("auth_type"),
            file: None,
        },
        Mistake {
            name: "a key that does not match its certificate",
            config: base().set_path("client_tls_key_file", &pki.alice.key),
            key: "client_tls_key_file",
            reason: "does not belong to",
            cited: None,
            file: Some(pki.alice.key.clone()),
        },
    ]
}

/// `file_needle`: how the file must be named (the full path, or just its name when pgmoat's
/// test harness chose the path).
fn assert_explained(mistake: &Mistake, text: &str, file_needle: &str, how: &str) {
    let file = match &mistake.file {
        Some(file) => file.display().to_string(),
        None => file_needle.to_owned(),
    };
    for needle in [file.as_str(), mistake.key, mistake.reason] {
        assert!(
            text.contains(needle),
            "{} ({how}): {needle:?} not in:\n{text}",
            mistake.name
        );
    }
    // Said once: a message repeated by its own error chain reads like two problems.
    assert_eq!(
        text.matches(mistake.reason).count(),
        1,
        "{} ({how}): the reason is repeated:\n{text}",
        mistake.name
    );
}

/// 1-based number of the first line of `text` that sets `key`.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(&format!("{key} ")))
        .unwrap_or_else(|| panic!("{key} not in\n{text}"))
        + 1
}

#[test]
fn check_config_and_run_refuse_each_mistake_naming_file_key_and_reason() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    for mistake in mistakes(&pki) {
        let text = mistake.config.build();
        let path = write_config(dir.path(), &text);
        let out = check_config(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{}: check-config accepted it\n{}",
            mistake.name,
            output_text(&out)
        );
        assert_explained(
            &mistake,
            &stderr,
            &path.display().to_string(),
            "check-config",
        );
        if let Some(key) = mistake.cited {
            let place = format!(
                "{}:{}: {}:",
                path.display(),
                line_of(&text, key),
                mistake.key
            );
            assert!(
                stderr.contains(&place),
                "{}: {place:?} not in:\n{stderr}",
                mistake.name
            );
        }
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("configuration OK"),
            "{}",
            mistake.name
        );

        // `run` refuses the same config with the same explanation, and never starts serving.
        let (status, log) = Pgmoat::start_expect_failure(&text);
        assert!(!status.success(), "{}", mistake.name);
        assert_explained(&mistake, &log, "pgmoat.toml:", "run");
        assert!(
            !log.contains("accepting connections"),
            "{}: {log}",
            mistake.name
        );
    }
}

#[test]
fn a_good_config_checks_out() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &ConfigBuilder::for_port(&pki, 5432)
            .client_sslmode("verify-full")
            .build(),
    );
    let out = check_config(&path);
    assert!(out.status.success(), "{}", output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("configuration OK"), "{stdout}");
    // The summary never shows a secret, even one written in a database entry.
    let with_password = write_config(
        dir.path(),
        &ConfigBuilder::for_port(&pki, 5432)
            .database_line("password = \"entry-secret\"")
            .build(),
    );
    let out = check_config(&with_password);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        !output_text(&out).contains("entry-secret"),
        "{}",
        output_text(&out)
    );
}

/// trust with optional TLS and admin_users set lets anyone who reaches the port run SHUTDOWN:
/// check-config says so (it is valid, so it still passes), and with client certificates
/// required it does not.
#[test]
fn check_config_warns_about_trust_with_an_open_admin_console() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let open = ConfigBuilder::for_port(&pki, 5432)
        .auth_type("trust")
        .set("admin_users", r#"["admin"]"#);
    let out = check_config(&write_config(dir.path(), &open.clone().build()));
    assert!(out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: auth_type = \"trust\"") && stderr.contains("SHUTDOWN"),
        "{stderr}"
    );
    let closed = open.client_sslmode("verify-full");
    let out = check_config(&write_config(dir.path(), &closed.build()));
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning:"),
        "{}",
        output_text(&out)
    );
}
