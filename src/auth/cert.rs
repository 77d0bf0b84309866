//! The identity in a client certificate that rustls already verified: its common name (CN),
//! or the DNS names, URIs or email addresses among its subject alternative names, as
//! auth_cert_identity chooses. We only read names here; trust decisions happen in the TLS
//! layer, and which user an identity may be is decided by the caller (equal, or an ident map).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::AuthError;
use crate::config::CertIdentity;

/// The identities of kind `kind` in a DER-encoded end-entity certificate: one CN, or every SAN
/// of the kind (any of them may match). Never empty on success.
pub fn cert_identities(
    end_entity_der: &[u8],
    kind: CertIdentity,
) -> Result<Vec<String>, AuthError> {
    if kind == CertIdentity::Cn {
        return cert_common_name(end_entity_der).map(|cn| vec![cn]);
    }
    let cert = parse(end_entity_der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| AuthError::CertParse(e.to_string()))?;
    let names: Vec<String> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match (kind, name) {
            (CertIdentity::SanDns, GeneralName::DNSName(n))
            | (CertIdentity::SanUri, GeneralName::URI(n))
            | (CertIdentity::SanEmail, GeneralName::RFC822Name(n)) => Some(*n),
            _ => None,
        })
        // The same rule as for the CN: an empty name or one with a NUL names nobody.
        .filter(|n| !n.is_empty() && !n.contains('\0'))
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err(AuthError::CertNoIdentity(kind));
    }
    Ok(names)
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, AuthError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| AuthError::CertParse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(AuthError::CertParse(
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(cert)
}

/// The CN of a DER-encoded end-entity certificate.
///
/// Refuses certificates with several CNs (which one names the user would be a guess), CNs that
/// are not UTF-8 strings, and empty CNs or CNs with a NUL (PostgreSQL refuses those too: a NUL
/// could make "alice\0.evil" compare equal to "alice" somewhere downstream).
pub fn cert_common_name(end_entity_der: &[u8]) -> Result<String, AuthError> {
    let cert = parse(end_entity_der)?;
    let mut names = cert.subject().iter_common_name();
    let first = names.next().ok_or(AuthError::CertNoCommonName)?;
    if names.next().is_some() {
        return Err(AuthError::CertManyCommonNames);
    }
    let cn = first
        .as_str()
        .map_err(|_| AuthError::CertCommonNameNotUtf8)?;
    if cn.is_empty() || cn.contains('\0') {
        return Err(AuthError::CertCommonNameInvalid);
    }
    Ok(cn.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::string::BmpString;
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};

    fn cert_with_dn(dn: DistinguishedName) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["client.example".to_string()]).unwrap();
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn cert_with_cn(cn: impl Into<DnValue>) -> Vec<u8> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "pgmoat tests");
        dn.push(DnType::CommonName, cn);
        cert_with_dn(dn)
    }

    #[test]
    fn reads_the_common_name() {
        assert_eq!(cert_common_name(&cert_with_cn("alice")).unwrap(), "alice");
    }

    #[test]
    fn reads_a_non_ascii_common_name() {
        assert_eq!(cert_common_name(&cert_with_cn("zoë")).unwrap(), "zoë");
    }

    #[test]
    fn simple_self_signed_cert_has_rcgen_default_cn() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        assert_eq!(
            cert_common_name(cert.cert.der()).unwrap(),
            "rcgen self signed cert"
        );
    }

    #[test]
    fn no_common_name_is_an_error() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "pgmoat tests");
        let err = cert_common_name(&cert_with_dn(dn)).unwrap_err();
        assert!(matches!(err, AuthError::CertNoCommonName), "{err:?}");
    }

    #[test]
    fn two_common_names_are_refused() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "alice");
        // rcgen keeps one value per known type, so the second CN goes in under its raw OID.
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "mallory");
        let err = cert_common_name(&cert_with_dn(dn)).unwrap_err();
        assert!(matches!(err, AuthError::CertManyCommonNames), "{err:?}");
    }

    #[test]
    fn bmp_string_common_name_is_not_utf8() {
        let cn = DnValue::BmpString(BmpString::try_from("alice").unwrap());
        let err = cert_common_name(&cert_with_cn(cn)).unwrap_err();
        assert!(matches!(err, AuthError::CertCommonNameNotUtf8), "{err:?}");
    }

    #[test]
    fn nul_in_common_name_is_refused() {
        let err = cert_common_name(&cert_with_cn("alice\0.evil")).unwrap_err();
        assert!(matches!(err, AuthError::CertCommonNameInvalid), "{err:?}");
    }

    fn cert_with_sans(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "svc");
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_every_san_of_the_chosen_kind() {
        use rcgen::SanType;
        let ia5 = |s: &str| s.try_into().unwrap();
        let der = cert_with_sans(vec![
            SanType::DnsName(ia5("api.billing")),
            SanType::URI(ia5("spiffe://prod/ns/billing/sa/api")),
            SanType::DnsName(ia5("api2.billing")),
            SanType::Rfc822Name(ia5("ops@example.com")),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ]);
        assert_eq!(
            cert_identities(&der, CertIdentity::SanDns).unwrap(),
            ["api.billing", "api2.billing"]
        );
        assert_eq!(
            cert_identities(&der, CertIdentity::SanUri).unwrap(),
            ["spiffe://prod/ns/billing/sa/api"]
        );
        assert_eq!(
            cert_identities(&der, CertIdentity::SanEmail).unwrap(),
            ["ops@example.com"]
        );
        assert_eq!(cert_identities(&der, CertIdentity::Cn).unwrap(), ["svc"]);
    }

    #[test]
    fn no_san_of_the_kind_is_an_error() {
        let der = cert_with_sans(vec![rcgen::SanType::DnsName(
            "api.billing".try_into().unwrap(),
        )]);
        let err = cert_identities(&der, CertIdentity::SanUri).unwrap_err();
        assert!(
            matches!(err, AuthError::CertNoIdentity(CertIdentity::SanUri)),
            "{err:?}"
        );
        assert!(err.to_string().contains("san-uri"), "{err}");
        // Without any SAN extension at all, the same.
        let err = cert_identities(&cert_with_sans(vec![]), CertIdentity::SanDns).unwrap_err();
        assert!(matches!(err, AuthError::CertNoIdentity(_)), "{err:?}");
    }

    #[test]
    fn garbage_and_trailing_bytes_are_parse_errors() {
        let err = cert_common_name(b"not a certificate").unwrap_err();
        assert!(matches!(err, AuthError::CertParse(_)), "{err:?}");

        let mut der = cert_with_cn("alice");
        der.push(0);
        let err = cert_common_name(&der).unwrap_err();
        assert!(matches!(err, AuthError::CertParse(_)), "{err:?}");
    }
}
