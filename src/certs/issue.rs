//! Leaf certificates: server (EKU serverAuth) and client (EKU clientAuth, CN = PostgreSQL
//! user) certificates signed by the CA, with SANs parsed from the operator's
//! `"DNS:...,IP:..."` syntax.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType, string::Ia5String,
};

use super::ca::load_ca;
use super::files::{self, CERT_MODE, KEY_MODE};
use super::params::{check_validity, distinguished_name, generate_key, random_serial};
use super::{CertsError, IssueOptions, IssuedPaths, KeyAlgorithm};

/// One subject alternative name, displayed the way operators write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanEntry {
    Dns(String),
    Ip(IpAddr),
    Email(String),
    /// A URI such as a SPIFFE ID (`spiffe://trust-domain/path`), for workload identity.
    Uri(String),
}

impl fmt::Display for SanEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SanEntry::Dns(d) => write!(f, "DNS:{d}"),
            SanEntry::Ip(ip) => write!(f, "IP:{ip}"),
            SanEntry::Email(e) => write!(f, "EMAIL:{e}"),
            SanEntry::Uri(u) => write!(f, "URI:{u}"),
        }
    }
}

/// Parses `DNS:name`, `IP:addr`, `EMAIL:addr` or `URI:uri` (prefix case-insensitive).
/// Without a prefix the value is an IP address if it parses as one, else a DNS name.
pub fn parse_san(raw: &str) -> Result<SanEntry, CertsError> {
    let bad = |reason: &str| CertsError::BadSan {
        value: raw.to_string(),
        reason: reason.to_string(),
    };
    let value = raw.trim();
    let (kind, rest) = match value.split_once(':') {
        Some((k, rest))
            if ["dns", "ip", "email", "uri"].contains(&k.to_ascii_lowercase().as_str()) =>
        {
            (Some(k.to_ascii_lowercase()), rest.trim())
        }
        _ => (None, value),
    };
    if rest.is_empty() {
        return Err(bad("empty value"));
    }
    match kind.as_deref() {
        Some("ip") => rest
            .parse()
            .map(SanEntry::Ip)
            .map_err(|_| bad("not an IPv4 or IPv6 address")),
        Some("email") => {
            validate_email(rest).map_err(bad)?;
            Ok(SanEntry::Email(rest.to_string()))
        }
        Some("uri") => {
            validate_uri(rest).map_err(bad)?;
            Ok(SanEntry::Uri(rest.to_string()))
        }
        Some(_) => {
            validate_dns(rest).map_err(bad)?;
            Ok(SanEntry::Dns(rest.to_ascii_lowercase()))
        }
        None => match rest.parse() {
            Ok(ip) => Ok(SanEntry::Ip(ip)),
            Err(_) => {
                validate_dns(rest)
                    .map_err(|r| bad(&format!("{r} (prefix with DNS:, IP:, EMAIL: or URI:)")))?;
                Ok(SanEntry::Dns(rest.to_ascii_lowercase()))
            }
        },
    }
}

/// Hostname syntax (labels of letters, digits, `-`, `_`; an optional leading `*.` wildcard),
/// because webpki rejects a certificate with a malformed DNS SAN outright.
fn validate_dns(name: &str) -> Result<(), &'static str> {
    let body = name.strip_prefix("*.").unwrap_or(name);
    if name.len() > 253 {
        return Err("DNS name longer than 253 characters");
    }
    for label in body.split('.') {
        if label.is_empty() {
            return Err("DNS name has an empty label");
        }
        if label.len() > 63 {
            return Err("DNS label longer than 63 characters");
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("DNS name may contain only letters, digits, '-', '_' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("DNS label must not start or end with '-'");
        }
    }
    Ok(())
}

fn validate_email(addr: &str) -> Result<(), &'static str> {
    match addr.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.contains('@')
                && addr.is_ascii()
                && !addr.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            validate_dns(domain).map_err(|_| "email domain is not a valid host name")
        }
        _ => Err("not an email address (local@domain, ASCII)"),
    }
}

/// An absolute URI (RFC 3986 `scheme:rest`, ASCII, no spaces), which is what RFC 5280 asks of
/// a uniformResourceIdentifier SAN; a SPIFFE ID must also name a trust domain.
fn validate_uri(uri: &str) -> Result<(), &'static str> {
    if !uri.is_ascii()
        || uri
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_control())
    {
        return Err("URI must be ASCII without spaces (percent-encode other characters)");
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err("not an absolute URI (scheme:rest, e.g. spiffe://prod/ns/billing/sa/api)");
    };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok || rest.is_empty() {
        return Err("not an absolute URI (scheme:rest, e.g. spiffe://prod/ns/billing/sa/api)");
    }
    if scheme.eq_ignore_ascii_case("spiffe") {
        let domain = rest
            .strip_prefix("//")
            .and_then(|r| r.split('/').next())
            .unwrap_or("");
        if domain.is_empty() {
            return Err("a SPIFFE ID is spiffe://TRUST-DOMAIN/PATH");
        }
    }
    Ok(())
}

/// NAME becomes file names, so it must be a plain file stem.
fn validate_name(name: &str) -> Result<(), CertsError> {
    let bad = |reason: &str| CertsError::BadName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() || name.len() > 200 {
        return Err(bad("must be 1 to 200 characters"));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(bad("must not start with '.' or '-'"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
    {
        return Err(bad(
            "may contain only letters, digits, '.', '_', '-' and '@' (use --cn for other CNs)",
        ));
    }
    Ok(())
}

impl SanEntry {
    fn to_rcgen(&self) -> Result<SanType, CertsError> {
        let ia5 = |s: &str| {
            Ia5String::try_from(s).map_err(|e| CertsError::BadSan {
                value: self.to_string(),
                reason: e.to_string(),
            })
        };
        Ok(match self {
            SanEntry::Dns(d) => SanType::DnsName(ia5(d)?),
            SanEntry::Ip(ip) => SanType::IpAddress(*ip),
            SanEntry::Email(e) => SanType::Rfc822Name(ia5(e)?),
            SanEntry::Uri(u) => SanType::URI(ia5(u)?),
        })
    }
}

/// The output paths for `name` in `out_dir`.
pub(crate) fn issued_paths(out_dir: &Path, name: &str) -> IssuedPaths {
    IssuedPaths {
        cert: out_dir.join(format!("{name}.crt")),
        key: out_dir.join(format!("{name}.key")),
        combined: out_dir.join(format!("{name}-combined.pem")),
    }
}

/// Issues `NAME.crt` (0644), `NAME.key` (0600) and `NAME-combined.pem` (0600, certificate
/// then key) in `out_dir`, signed by the CA in `ca_dir` (default `<out_dir>/ca`). Nothing is
/// written if any of the three exists and `force` is off.
pub fn issue(opts: &IssueOptions) -> Result<IssuedPaths, CertsError> {
    validate_name(&opts.name)?;
    check_validity(opts.not_before, opts.not_after)?;
    let mut sans: Vec<SanEntry> = Vec::with_capacity(opts.sans.len());
    for raw in &opts.sans {
        let san = parse_san(raw)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    let paths = issued_paths(&opts.out_dir, &opts.name);
    files::ensure_absent(&[&paths.key, &paths.cert, &paths.combined], opts.force)?;
    let issuer = load_ca(&opts.effective_ca_dir())?;

    let key = generate_key(opts.key_algorithm)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&opts.subject, &opts.name)?;
    params.subject_alt_names = sans
        .iter()
        .map(SanEntry::to_rcgen)
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = match opts.key_algorithm {
        KeyAlgorithm::EcP256 => vec![KeyUsagePurpose::DigitalSignature],
        // TLS 1.2 RSA key transport needs keyEncipherment; OpenSSL peers check it.
        KeyAlgorithm::Rsa(_) => vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ],
    };
    params.extended_key_usages = vec![if opts.client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    params.use_authority_key_identifier_extension = true;
    params.not_before = opts.not_before;
    params.not_after = opts.not_after;
    params.serial_number = Some(random_serial());
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| CertsError::Generate {
            what: "sign the certificate",
            source,
        })?;

    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    files::ensure_dir(&opts.out_dir)?;
    files::write_atomic(&paths.key, key_pem.as_bytes(), KEY_MODE, opts.force)?;
    files::write_atomic(&paths.cert, cert_pem.as_bytes(), CERT_MODE, opts.force)?;
    let combined = format!("{cert_pem}{key_pem}");
    files::write_atomic(&paths.combined, combined.as_bytes(), KEY_MODE, opts.force)?;
    Ok(paths)
}

#[cfg(test)]
mod tests;
