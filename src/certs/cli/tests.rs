use std::fs;

use clap::{CommandFactory, Parser};

use super::*;

#[derive(Parser)]
struct TestCli {
    #[command(subcommand)]
    cmd: CertsCommand,
}

fn parse(args: &[&str]) -> CertsCommand {
    TestCli::try_parse_from(std::iter::once("certs").chain(args.iter().copied()))
        .unwrap()
        .cmd
}

fn exec(args: &[&str]) -> (Result<u8, CertsError>, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = run_to(parse(args), &mut out, &mut err);
    (
        r,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn clap_definition_is_consistent() {
    TestCli::command().debug_assert();
}

#[test]
fn san_flag_splits_commas_and_repeats() {
    match parse(&[
        "issue",
        "db",
        "--san",
        "DNS:postgres,DNS:localhost,IP:127.0.0.1",
        "--san",
        "DNS:x",
    ]) {
        CertsCommand::Issue {
            sans, days, out, ..
        } => {
            assert_eq!(
                sans,
                ["DNS:postgres", "DNS:localhost", "IP:127.0.0.1", "DNS:x"]
            );
            assert_eq!(days, 365);
            assert_eq!(out, PathBuf::from("certs"));
        }
        other => panic!("{other:?}"),
    }
    assert!(TestCli::try_parse_from(["certs", "init", "--days", "0"]).is_err());
}

#[test]
fn init_issue_check_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();

    let (r, out, _) = exec(&[
        "init",
        "--out",
        d,
        "--country",
        "de",
        "--org",
        "Acme",
        "--days",
        "30",
    ]);
    assert_eq!(r.unwrap(), 0);
    assert!(
        out.contains("Created CA C=DE, O=Acme, CN=pgmoat CA"),
        "{out}"
    );
    assert!(!out.contains("PRIVATE KEY"));

    // A leaf that outlives the CA gets a warning.
    let (r, out, err) = exec(&[
        "issue",
        "server",
        "--out",
        d,
        "--san",
        "DNS:localhost,IP:127.0.0.1",
    ]);
    assert_eq!(r.unwrap(), 0);
    assert!(
        out.contains("SANs         DNS:localhost, IP:127.0.0.1"),
        "{out}"
    );
    assert!(err.contains("outlives its CA"), "{err}");
    assert!(!out.contains("PRIVATE KEY"));

    let (r, out, _) = exec(&[
        "issue", "alice", "--out", d, "--client", "--days", "60", "--rsa",
    ]);
    assert_eq!(r.unwrap(), 0);
    assert!(out.contains("user \"alice\""), "{out}");

    let (r, _, err) = exec(&["issue", "nosan", "--out", d, "--days", "20"]);
    assert_eq!(r.unwrap(), 0);
    assert!(err.contains("no --san"), "{err}");

    // Second issue without --force: refused, names the file.
    let (r, _, _) = exec(&["issue", "server", "--out", d, "--san", "DNS:localhost"]);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("server.key") && e.contains("--force"), "{e}");

    // CA (30 days) and leaves: with warn 90 / critical 30 the CA and nosan are critical.
    let (r, out, _) = exec(&["check", d]);
    assert_eq!(r.unwrap(), 2, "{out}");
    assert!(out.contains("chain        ok (verified against"), "{out}");
    assert!(out.contains("CA certificate (trust anchor)"), "{out}");
    assert!(out.contains("overall CRITICAL"), "{out}");

    // Only alice (60 days): a warning.
    let alice = dir.path().join("alice.crt");
    let (r, out, _) = exec(&["check", alice.to_str().unwrap()]);
    assert_eq!(r.unwrap(), 1, "{out}");
    assert!(out.contains("purpose      client"), "{out}");
    let (r, _, _) = exec(&["check", alice.to_str().unwrap(), "--warn-days", "50"]);
    assert_eq!(r.unwrap(), 0);
}

#[test]
fn run_returns_errors_for_missing_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (r, _, _) = exec(&["issue", "x", "--out", d, "--san", "DNS:x"]);
    assert!(matches!(r, Err(CertsError::CaMissing { .. })));
    let missing = dir.path().join("missing.crt");
    assert!(run(parse(&["check", missing.to_str().unwrap()])).is_err());
    // Leftover check that nothing was written by the failed issue.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}
