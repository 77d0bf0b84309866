use super::*;

fn rules(text: &str) -> HbaRules {
    HbaRules::parse(text, "pg_hba.conf").unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> String {
    HbaRules::parse(text, "pg_hba.conf")
        .unwrap_err()
        .to_string()
}

fn req<'a>(tls: bool, database: &'a str, user: &'a str, addr: &str) -> HbaRequest<'a> {
    HbaRequest {
        tls,
        database,
        user,
        addr: addr.parse().unwrap(),
    }
}

/// The line of the rule that matches, if any.
fn line(r: &HbaRules, request: HbaRequest<'_>) -> Option<usize> {
    r.find(&request).map(|rule| rule.line)
}

const MIXED: &str = "\
# TYPE    DATABASE    USER     ADDRESS          METHOD   OPTIONS
local     all         all                       peer
hostssl   app         billing  10.0.0.0/8       cert     map=svc
hostssl   app,reports report   10.0.0.0/8       scram-sha-256
hostnossl all         legacy   192.168.1.0 255.255.255.0 md5
host      sameuser    all      ::1/128          trust
host      replication all      all              trust
hostssl   all         admin    all              reject
hostssl   \"all\"       ops      all              md5 clientcert=verify-full
host      all         all      all              scram-sha-256
";

#[test]
fn first_match_wins_by_type_database_user_and_address() {
    let r = rules(MIXED);
    assert_eq!(line(&r, req(true, "app", "billing", "10.1.2.3")), Some(3));
    // Not TLS: the hostssl line is skipped and the catch-all takes it.
    assert_eq!(line(&r, req(false, "app", "billing", "10.1.2.3")), Some(10));
    assert_eq!(
        line(&r, req(true, "reports", "report", "10.9.9.9")),
        Some(4)
    );
    assert_eq!(line(&r, req(true, "other", "report", "10.9.9.9")), Some(10));
    // Two-column netmask form, hostnossl.
    assert_eq!(line(&r, req(false, "x", "legacy", "192.168.1.77")), Some(5));
    assert_eq!(line(&r, req(true, "x", "legacy", "192.168.1.77")), Some(10));
    // sameuser, IPv6.
    assert_eq!(line(&r, req(true, "bob", "bob", "::1")), Some(6));
    assert_eq!(line(&r, req(true, "app", "bob", "::1")), Some(10));
    // replication never matches; reject is a match like any other.
    assert_eq!(
        line(&r, req(true, "replication", "x", "10.0.0.1")),
        Some(10)
    );
    assert_eq!(line(&r, req(true, "app", "admin", "10.0.0.1")), Some(8));
    // A quoted "all" is the database named all.
    assert_eq!(line(&r, req(true, "all", "ops", "1.2.3.4")), Some(9));
    assert_eq!(line(&r, req(true, "app", "ops", "1.2.3.4")), Some(10));
}

#[test]
fn no_rule_is_no_match() {
    let r = rules("hostssl app app 127.0.0.1/32 cert\n");
    assert!(r.find(&req(true, "app", "app", "127.0.0.2")).is_none());
    assert!(r.find(&req(true, "app", "bob", "127.0.0.1")).is_none());
    assert!(
        rules("# nothing\n\n")
            .find(&req(true, "a", "b", "127.0.0.1"))
            .is_none()
    );
}

#[test]
fn ipv4_mapped_addresses_match_ipv4_rules() {
    let r = rules("host all all 127.0.0.0/8 trust\n");
    assert_eq!(line(&r, req(true, "a", "b", "::ffff:127.0.0.1")), Some(1));
    assert_eq!(line(&r, req(true, "a", "b", "::1")), None);
    // Host bits in the written network are ignored, as PostgreSQL masks them.
    let r = rules("host all all 10.1.2.3/8 trust\n");
    assert_eq!(line(&r, req(true, "a", "b", "10.200.0.1")), Some(1));
}

#[test]
fn options_and_their_rules() {
    let r = rules(MIXED);
    let cert = &r.rules()[1];
    assert_eq!(cert.method, HbaMethod::Cert);
    assert_eq!(
        cert.clientcert,
        ClientCert::VerifyFull,
        "cert implies verify-full"
    );
    assert_eq!(cert.map.as_deref(), Some("svc"));
    assert_eq!(r.maps().collect::<Vec<_>>(), [("svc", 3)]);
    assert_eq!(r.rules()[7].clientcert, ClientCert::VerifyFull);
    assert_eq!(
        cert.describe(),
        "line 3: hostssl   app         billing  10.0.0.0/8       cert     map=svc"
    );
    let r = rules("hostssl all all all scram-sha-256 clientcert=verify-full map=m\n");
    assert_eq!(r.rules()[0].map.as_deref(), Some("m"));
    let r = rules("hostssl all all all trust clientcert=verify-ca\n");
    assert_eq!(r.rules()[0].clientcert, ClientCert::VerifyCa);
}

#[test]
fn certificate_needs_follow_the_rules() {
    let r = rules("hostssl all all all cert\n");
    assert!(r.wants_certificates() && !r.certificate_optional());
    let r = rules("hostssl all a all cert\nhostssl all b all scram-sha-256\n");
    assert!(r.wants_certificates() && r.certificate_optional());
    let r = rules("host all all all md5\n");
    assert!(!r.wants_certificates() && r.certificate_optional());
    let r = rules("hostssl all all all md5 clientcert=verify-ca\nhostnossl all all all md5\n");
    assert!(
        r.wants_certificates() && !r.certificate_optional(),
        "hostnossl never sees TLS"
    );
    let r = rules("hostssl all all all reject\n");
    assert!(!r.wants_certificates() && !r.certificate_optional());
}

#[test]
fn lines_pgmoat_cannot_honour_are_refused_with_file_line_and_reason() {
    let cases = [
        ("hostssl all all all password\n", "cleartext"),
        ("host all all all ldap\n", "\"ldap\" is not supported"),
        ("host all all all cert\n", "only supported on hostssl"),
        (
            "hostssl all all all cert clientcert=verify-ca\n",
            "only accepts verify-full",
        ),
        (
            "hostssl all all all md5 clientcert=1\n",
            "PostgreSQL 14 removed it",
        ),
        (
            "hostssl all all all md5 clientcert=maybe\n",
            "invalid value for clientcert",
        ),
        (
            "hostssl all all all md5 map=m\n",
            "needs method cert or clientcert=verify-full",
        ),
        (
            "hostssl all all all md5 foo=bar\n",
            "unrecognized authentication option",
        ),
        ("hostssl all all all md5 foo\n", "name=value"),
        (
            "hostnossl all all all md5 clientcert=verify-ca\n",
            "hostnossl",
        ),
        ("host samerole all all md5\n", "samerole is not supported"),
        ("host @dbs all all md5\n", "@file"),
        (
            "host all +admins all md5\n",
            "group +admins is not supported",
        ),
        (
            "host all all db.example.com md5\n",
            "host names are not supported",
        ),
        ("host all all samenet md5\n", "samenet is not supported"),
        ("host all all 10.0.0.0/33 md5\n", "invalid IP address/mask"),
        ("host all all 10.0.0.1 md5\n", "invalid IP mask"),
        (
            "host all all 10.0.0.1 255.0.0.0\n",
            "missing authentication method",
        ),
        ("host all all 10.0.0.1 255.0.255.0 md5\n", "invalid IP mask"),
        ("host all all\n", "too few fields"),
        ("hosts all all all md5\n", "invalid connection type"),
        ("host \"app all all md5\n", "unterminated"),
        ("host a,,b all all md5\n", "empty element"),
    ];
    for (text, needle) in cases {
        let e = error(&format!("# first line\n{text}"));
        assert!(e.starts_with("pg_hba.conf:2: "), "{text:?}: {e}");
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn local_and_gss_lines_load_and_never_match() {
    let r = rules(
        "local all all peer map=x\nhostgssenc all all all gss\nhostnogssenc all all all trust\n",
    );
    assert_eq!(line(&r, req(false, "a", "b", "127.0.0.1")), Some(3));
    assert!(r.maps().next().is_none());
}
