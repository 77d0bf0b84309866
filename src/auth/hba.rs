//! auth_hba_file: which authentication a connection gets, in pg_hba.conf format with
//! PostgreSQL 15's meaning for what pgmoat supports (PgBouncer's names):
//!
//! `TYPE DATABASE USER ADDRESS METHOD [OPTIONS]`, first match wins.
//! - TYPE: `host` (TLS or not), `hostssl`, `hostnossl`. `local` and `hostgssenc` lines are read
//!   and never match (pgmoat has no Unix socket and no GSSAPI encryption), so a file shared
//!   with PostgreSQL loads; `hostnogssenc` is `host`.
//! - DATABASE: comma list of names, `all`, `sameuser`; `replication` never matches (pgmoat
//!   refuses replication connections). USER: comma list of names or `all`. A quoted keyword is
//!   a name. `samerole`/`samegroup`, `+group` and `@file` need role membership or includes
//!   pgmoat does not have: refused at load, never silently ignored.
//! - ADDRESS: `all`, CIDR, or an address followed by a netmask column. Host names and
//!   `samehost`/`samenet` are refused at load.
//! - METHOD: `trust`, `reject`, `md5`, `scram-sha-256`, `cert`; anything else (including
//!   cleartext `password`) is refused at load.
//! - OPTIONS: `clientcert=verify-ca|verify-full` (a certificate must be presented; verify-full
//!   also checks its identity like `cert`), `map=NAME` on `cert` and, wider than PostgreSQL, on
//!   any rule with clientcert=verify-full, where the map applies to that identity check.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::conf_tokens::{Token, parse_lines, raw_fields, read_conf, split_list, tokenize};

/// A pg_hba.conf error: the file, or the line and why.
pub use super::conf_tokens::ConfFileError as HbaError;

/// The connection types a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnType {
    /// TLS or plain TCP.
    Host,
    HostSsl,
    HostNoSsl,
    /// `local` and `hostgssenc`: read, never matched.
    Never,
}

impl ConnType {
    fn matches(self, tls: bool) -> bool {
        match self {
            ConnType::Host => true,
            ConnType::HostSsl => tls,
            ConnType::HostNoSsl => !tls,
            ConnType::Never => false,
        }
    }

    /// Whether a TLS connection can match it.
    fn takes_tls(self) -> bool {
        matches!(self, ConnType::Host | ConnType::HostSsl)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    Trust,
    Reject,
    Md5,
    ScramSha256,
    Cert,
}

/// `clientcert=`: what the rule asks of a client certificate before (and, for verify-full,
/// after) its method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// Not set: a certificate is not needed (one that is sent is still verified by TLS).
    Optional,
    /// A certificate that verifies against client_tls_ca_file must be presented.
    VerifyCa,
    /// ... and its identity must be the user (or map to it).
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NameMatch {
    All,
    SameUser,
    /// `replication`: pgmoat has no replication connections.
    Nothing,
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AddrMatch {
    All,
    Net(IpNet),
}

#[derive(Debug, Clone)]
pub struct HbaRule {
    pub line: usize,
    pub conn: ConnType,
    databases: Vec<NameMatch>,
    users: Vec<NameMatch>,
    address: AddrMatch,
    pub method: HbaMethod,
    pub map: Option<String>,
    pub clientcert: ClientCert,
    /// The line as written, for logs.
    text: String,
}

impl HbaRule {
    /// `line N: <the rule as written>`, for logs and errors.
    pub fn describe(&self) -> String {
        format!("line {}: {}", self.line, self.text)
    }

    fn matches(&self, req: &HbaRequest<'_>) -> bool {
        self.conn.matches(req.tls)
            && self.databases.iter().any(|d| match d {
                NameMatch::All => true,
                NameMatch::SameUser => req.database == req.user,
                NameMatch::Nothing => false,
                NameMatch::Name(name) => name == req.database,
            })
            && self.users.iter().any(|u| match u {
                NameMatch::All => true,
                NameMatch::Name(name) => name == req.user,
                NameMatch::SameUser | NameMatch::Nothing => false,
            })
            && match &self.address {
                AddrMatch::All => true,
                AddrMatch::Net(net) => net.contains(&canonical(req.addr)),
            }
    }

    /// Whether a client without a certificate can get through this rule on TLS.
    fn accepts_without_certificate(&self) -> bool {
        self.conn.takes_tls()
            && matches!(
                self.method,
                HbaMethod::Trust | HbaMethod::Md5 | HbaMethod::ScramSha256
            )
            && self.clientcert == ClientCert::Optional
    }

    fn wants_certificate(&self) -> bool {
        self.conn.takes_tls()
            && (self.method == HbaMethod::Cert || self.clientcert != ClientCert::Optional)
    }
}

/// A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; rules written for IPv4 must
/// still match them.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

/// What a rule is matched against.
#[derive(Debug, Clone, Copy)]
pub struct HbaRequest<'a> {
    pub tls: bool,
    pub database: &'a str,
    pub user: &'a str,
    pub addr: IpAddr,
}

/// The rules of an auth_hba_file, in file order.
#[derive(Debug, Default)]
pub struct HbaRules {
    rules: Vec<HbaRule>,
}

impl HbaRules {
    pub fn load(path: &Path) -> Result<HbaRules, HbaError> {
        HbaRules::parse(&read_conf(path)?, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<HbaRules, HbaError> {
        let rules = parse_lines(text, origin, parse_line)?;
        Ok(HbaRules { rules })
    }

    pub fn rules(&self) -> &[HbaRule] {
        &self.rules
    }

    /// PostgreSQL's first match; `None`: no entry, the caller refuses (28000).
    pub fn find(&self, req: &HbaRequest<'_>) -> Option<&HbaRule> {
        self.rules.iter().find(|rule| rule.matches(req))
    }

    /// Some rule lets a TLS client in without a certificate, so the handshake must not insist.
    pub fn certificate_optional(&self) -> bool {
        self.rules.iter().any(HbaRule::accepts_without_certificate)
    }

    /// Some rule looks at client certificates, so the handshake must ask for them.
    pub fn wants_certificates(&self) -> bool {
        self.rules.iter().any(HbaRule::wants_certificate)
    }

    /// The maps rules name, with their lines.
    pub fn maps(&self) -> impl Iterator<Item = (&str, usize)> {
        self.rules
            .iter()
            .filter_map(|r| r.map.as_deref().map(|m| (m, r.line)))
    }
}

fn one_token(raw: &str) -> Result<Token, String> {
    let mut tokens = tokenize(raw)?;
    match tokens.len() {
        1 => Ok(tokens.remove(0)),
        _ => Err(format!("cannot read {raw:?}")),
    }
}

fn parse_line(line: &str, number: usize) -> Result<Option<HbaRule>, String> {
    // Whole-line tokenizing first: it reports an unterminated quote anywhere.
    if tokenize(line)?.is_empty() {
        return Ok(None);
    }
    let fields = raw_fields(line);
    let kind = one_token(fields[0])?;
    let (conn, lenient) = match (kind.quoted, kind.text.as_str()) {
        (false, "host" | "hostnogssenc") => (ConnType::Host, false),
        (false, "hostssl") => (ConnType::HostSsl, false),
        (false, "hostnossl") => (ConnType::HostNoSsl, false),
        (false, "local" | "hostgssenc") => (ConnType::Never, true),
        _ => {
            return Err(format!(
                "invalid connection type {:?}: expected host, hostssl or hostnossl",
                kind.text
            ));
        }
    };
    // local lines have no address column.
    let has_address = kind.text != "local";
    let needed = if has_address { 5 } else { 4 };
    if fields.len() < needed {
        return Err(format!(
            "too few fields: expected TYPE DATABASE USER{} METHOD",
            if has_address { " ADDRESS" } else { "" }
        ));
    }
    let databases = split_list(fields[1])?
        .into_iter()
        .map(|t| database_match(&t))
        .collect::<Result<Vec<_>, _>>()?;
    let users = split_list(fields[2])?
        .into_iter()
        .map(|t| user_match(&t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rest = &fields[3..];
    let address = if has_address {
        let (address, used) = address_match(rest)?;
        rest = &rest[used..];
        address
    } else {
        AddrMatch::All
    };
    let Some((method_field, options)) = rest.split_first() else {
        return Err("missing authentication method".into());
    };
    let method_token = one_token(method_field)?;
    let text = line.split('#').next().unwrap_or(line).trim().to_owned();
    if lenient {
        // Never matched: its method and options may be anything PostgreSQL knows.
        return Ok(Some(HbaRule {
            line: number,
            conn,
            databases,
            users,
            address,
            method: HbaMethod::Reject,
            map: None,
            clientcert: ClientCert::Optional,
            text,
        }));
    }
    let method = match method_token.text.as_str() {
        "trust" => HbaMethod::Trust,
        "reject" => HbaMethod::Reject,
        "md5" => HbaMethod::Md5,
        "scram-sha-256" => HbaMethod::ScramSha256,
        "cert" => HbaMethod::Cert,
        "password" => {
            return Err(
                "authentication method \"password\" (cleartext) is not supported by pgmoat; \
                 use scram-sha-256"
                    .into(),
            );
        }
        other => {
            return Err(format!(
                "authentication method {other:?} is not supported by pgmoat \
                 (trust, reject, md5, scram-sha-256 or cert)"
            ));
        }
    };
    if method == HbaMethod::Cert && conn != ConnType::HostSsl {
        return Err("cert authentication is only supported on hostssl connections".into());
    }
    let mut map = None;
    let mut clientcert = None;
    for option in options {
        let token = one_token(option)?;
        let Some((name, value)) = token.text.split_once('=') else {
            return Err(format!(
                "authentication option not in name=value format: {}",
                token.text
            ));
        };
        match name {
            "map" => map = Some(value.to_owned()),
            "clientcert" => {
                clientcert = Some(match value {
                    "verify-ca" => ClientCert::VerifyCa,
                    "verify-full" => ClientCert::VerifyFull,
                    "1" | "0" | "no-verify" => {
                        return Err(format!(
                            "clientcert={value} is not valid (PostgreSQL 14 removed it): use \
                             clientcert=verify-ca, or leave the option out"
                        ));
                    }
                    other => {
                        return Err(format!(
                            "invalid value for clientcert: {other:?} (verify-ca or verify-full)"
                        ));
                    }
                });
            }
            other => {
                return Err(format!(
                    "unrecognized authentication option name: {other:?} (map or clientcert)"
                ));
            }
        }
    }
    let clientcert = match (method, clientcert) {
        (HbaMethod::Cert, Some(ClientCert::VerifyCa)) => {
            return Err(
                "clientcert only accepts verify-full when using cert authentication".into(),
            );
        }
        (HbaMethod::Cert, _) => ClientCert::VerifyFull,
        (HbaMethod::Reject, Some(_)) => {
            return Err("clientcert has no meaning on a reject rule".into());
        }
        (_, given) => given.unwrap_or(ClientCert::Optional),
    };
    if clientcert != ClientCert::Optional && conn == ConnType::HostNoSsl {
        return Err("clientcert cannot be used on hostnossl connections".into());
    }
    if map.is_some() && clientcert != ClientCert::VerifyFull {
        return Err(
            "map= applies to a certificate identity: it needs method cert or \
             clientcert=verify-full"
                .into(),
        );
    }
    Ok(Some(HbaRule {
        line: number,
        conn,
        databases,
        users,
        address,
        method,
        map,
        clientcert,
        text,
    }))
}

fn database_match(token: &Token) -> Result<NameMatch, String> {
    if !token.quoted {
        match token.text.as_str() {
            "all" => return Ok(NameMatch::All),
            "sameuser" => return Ok(NameMatch::SameUser),
            "replication" => return Ok(NameMatch::Nothing),
            "samerole" | "samegroup" => {
                return Err(format!(
                    "database keyword {} is not supported by pgmoat (it does not know role \
                     membership)",
                    token.text
                ));
            }
            _ => {}
        }
        if token.text.starts_with('@') {
            return Err("@file inclusion is not supported by pgmoat".into());
        }
    }
    Ok(NameMatch::Name(token.text.clone()))
}

fn user_match(token: &Token) -> Result<NameMatch, String> {
    if token.is_keyword("all") {
        return Ok(NameMatch::All);
    }
    if !token.quoted {
        if token.text.starts_with('+') {
            return Err(format!(
                "group {} is not supported by pgmoat (it does not know role membership); list \
                 the users",
                token.text
            ));
        }
        if token.text.starts_with('@') {
            return Err("@file inclusion is not supported by pgmoat".into());
        }
    }
    Ok(NameMatch::Name(token.text.clone()))
}

/// The address columns at the start of `fields`, and how many were used (2 for address +
/// netmask).
fn address_match(fields: &[&str]) -> Result<(AddrMatch, usize), String> {
    let token = one_token(fields[0])?;
    let text = token.text.as_str();
    if !token.quoted {
        match text {
            "all" => return Ok((AddrMatch::All, 1)),
            "samehost" | "samenet" => {
                return Err(format!(
                    "{text} is not supported by pgmoat; use an address in CIDR form"
                ));
            }
            _ => {}
        }
    }
    if text.contains('/') {
        let net: IpNet = text
            .parse()
            .map_err(|_| format!("invalid IP address/mask {text:?}"))?;
        return Ok((AddrMatch::Net(net.trunc()), 1));
    }
    let Ok(addr) = text.parse::<IpAddr>() else {
        return Err(format!(
            "host names are not supported by pgmoat ({text:?}); use an address in CIDR form"
        ));
    };
    // PostgreSQL's older two-column form: the netmask follows.
    let mask_field = fields
        .get(1)
        .ok_or("end-of-line before netmask specification")?;
    let mask_token = one_token(mask_field)?;
    let mask: IpAddr = mask_token
        .text
        .parse()
        .map_err(|_| format!("invalid IP mask {:?}", mask_token.text))?;
    let net = IpNet::with_netmask(addr, mask)
        .map_err(|_| format!("invalid IP mask {:?} for {addr}", mask_token.text))?;
    if fields.len() < 3 {
        return Err("missing authentication method".into());
    }
    Ok((AddrMatch::Net(net.trunc()), 2))
}

#[cfg(test)]
mod tests;
