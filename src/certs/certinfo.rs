//! What a certificate says about itself: subject, issuer, SANs, serial, validity, purpose.
//! Independent of the CLI so logs, the admin console (SHOW CERTS) and metrics can use it.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use super::CertsError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// RFC 4514-like, e.g. `C=DE, O=Acme, CN=server`.
    pub subject: String,
    pub issuer: String,
    /// `DNS:name`, `IP:addr`, `EMAIL:addr`, `URI:uri` (the syntax `certs issue --san` takes).
    pub sans: Vec<String>,
    /// Uppercase hex without separators, as `openssl x509 -serial` prints it.
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    /// The first CN of the subject (for client certs: the PostgreSQL user name).
    pub common_name: Option<String>,
    /// Usable for TLS servers / clients: the EKU lists the purpose, or anyExtendedKeyUsage,
    /// or has no EKU at all (which allows every purpose).
    pub server_auth: bool,
    pub client_auth: bool,
    /// SHA-256 of the DER, `AB:CD:...` like `openssl x509 -fingerprint -sha256`.
    pub sha256_fingerprint: String,
}

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Result<Self, CertsError> {
        let (_, x) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertsError::BadCertificate(e.to_string()))?;
        let sans = match x.subject_alternative_name() {
            Ok(Some(ext)) => ext.value.general_names.iter().map(san_string).collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                return Err(CertsError::BadCertificate(format!(
                    "bad SAN extension: {e}"
                )));
            }
        };
        let (server_auth, client_auth) = match x.extended_key_usage() {
            Ok(Some(eku)) => (
                eku.value.any || eku.value.server_auth,
                eku.value.any || eku.value.client_auth,
            ),
            Ok(None) => (true, true),
            Err(e) => {
                return Err(CertsError::BadCertificate(format!(
                    "bad EKU extension: {e}"
                )));
            }
        };
        let common_name = x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Ok(CertInfo {
            subject: x.subject().to_string(),
            issuer: x.issuer().to_string(),
            sans,
            serial_hex: serial_hex(x.raw_serial()),
            not_before: x.validity().not_before.to_datetime(),
            not_after: x.validity().not_after.to_datetime(),
            is_ca: x.is_ca(),
            common_name,
            server_auth,
            client_auth,
            sha256_fingerprint: hex_upper(&Sha256::digest(der), ":"),
        })
    }

    /// Whole days until `not_after` (negative once expired; 0 in the last day, and also in
    /// the first day after expiry: use [`CertInfo::is_expired`] for the boolean).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_days()
    }

    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now > self.not_after
    }

    pub fn is_not_yet_valid(&self, now: OffsetDateTime) -> bool {
        now < self.not_before
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`, for tables and logs.
pub fn format_utc(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Every certificate in a PEM file, in file order; other sections (keys) are skipped.
pub fn read_pem_file(path: &Path) -> Result<Vec<CertInfo>, CertsError> {
    read_pem_certs(path)?
        .iter()
        .map(|der| {
            CertInfo::from_der(der).map_err(|e| CertsError::BadPem {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// The DER of every certificate in a PEM file; an error if there is none.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertsError> {
    let bytes = std::fs::read(path).map_err(|e| CertsError::io(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertsError::BadPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertsError::BadPem {
            path: path.to_path_buf(),
            reason: "no certificate in file".into(),
        });
    }
    Ok(certs)
}

fn san_string(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::RFC822Name(e) => format!("EMAIL:{e}"),
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::IPAddress(bytes) => match ip_from_bytes(bytes) {
            Some(ip) => format!("IP:{ip}"),
            None => format!("IP:<{} bytes>", bytes.len()),
        },
        other => format!("{other:?}"),
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// The serial without DER's sign-padding zero bytes (openssl prints it that way).
fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex_upper(&raw[start..], "")
}

fn hex_upper(bytes: &[u8], sep: &str) -> String {
    let mut out = String::with_capacity(bytes.len() * (2 + sep.len()));
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        let _ = write!(out, "{b:02X}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{CaOptions, IssueOptions, init_ca, issue};
    use time::Duration;

    #[test]
    fn describes_an_issued_cert() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CaOptions::new(dir.path());
        ca.subject.org = Some("Acme".into());
        init_ca(&ca).unwrap();
        let mut opts = IssueOptions::new(
            "server",
            [
                "DNS:localhost",
                "IP:127.0.0.1",
                "IP:::1",
                "EMAIL:a@b.example",
            ],
            dir.path(),
        );
        let now = OffsetDateTime::now_utc();
        opts.not_after = now + Duration::days(40) + Duration::hours(1);
        let p = issue(&opts).unwrap();

        let infos = read_pem_file(&p.cert).unwrap();
        assert_eq!(infos.len(), 1);
        let info = &infos[0];
        assert_eq!(info.subject, "CN=server");
        assert_eq!(info.issuer, "O=Acme, CN=pgmoat CA");
        assert_eq!(info.common_name.as_deref(), Some("server"));
        assert_eq!(
            info.sans,
            [
                "DNS:localhost",
                "IP:127.0.0.1",
                "IP:::1",
                "EMAIL:a@b.example"
            ]
        );
        assert_eq!(info.serial_hex.len(), 32);
        assert!(
            info.serial_hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
        assert!(!info.is_ca && info.server_auth && !info.client_auth);
        assert_eq!(info.days_left(now), 40);
        assert!(!info.is_expired(now) && !info.is_not_yet_valid(now));
        assert!(info.is_expired(now + Duration::days(41)));
        assert!(info.days_left(now + Duration::days(50)) < 0);
        assert_eq!(info.sha256_fingerprint.len(), 32 * 3 - 1);

        let ca_info = &read_pem_file(&dir.path().join("ca/ca.crt")).unwrap()[0];
        assert!(ca_info.is_ca);
        assert_eq!(ca_info.subject, ca_info.issuer);

        // The combined file holds the certificate and a key; only the certificate is read.
        let combined = read_pem_file(&p.combined).unwrap();
        assert_eq!(combined, infos);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let err = read_pem_file(&empty).unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");
        assert!(err.to_string().contains("no certificate"), "{err}");
        let missing = read_pem_file(&dir.path().join("nope.crt")).unwrap_err();
        assert!(matches!(missing, CertsError::Io { .. }));
        assert!(CertInfo::from_der(b"\x30\x03\x02\x01\x01").is_err());
    }

    #[test]
    fn utc_formatting() {
        let t = OffsetDateTime::from_unix_timestamp(1_772_593_567)
            .unwrap()
            .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(format_utc(t), "2026-03-04 03:06:07 UTC");
    }

    #[test]
    fn serial_formatting() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8A01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(hex_upper(&[0xab, 0x01], ":"), "AB:01");
    }
}
