//! Building blocks shared by the CA and leaf issuance: key generation, subject DN, random
//! serials and validity checks.

use rcgen::{DistinguishedName, DnType, DnValue, KeyPair, SerialNumber};
use time::OffsetDateTime;

use super::{CertsError, KeyAlgorithm, RsaBits, Subject};

pub(crate) fn generate_key(alg: KeyAlgorithm) -> Result<KeyPair, CertsError> {
    let generated = match alg {
        KeyAlgorithm::EcP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::Rsa(bits) => {
            let size = match bits {
                RsaBits::B2048 => rcgen::RsaKeySize::_2048,
                RsaBits::B3072 => rcgen::RsaKeySize::_3072,
                RsaBits::B4096 => rcgen::RsaKeySize::_4096,
            };
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)
        }
    };
    generated.map_err(|source| CertsError::Generate {
        what: "generate a key pair",
        source,
    })
}

/// 16 random bytes with the top bit cleared, so the DER INTEGER stays positive without a
/// padding byte. rcgen's default (a hash of the public key) would repeat on re-issue with
/// the same key and confuse CRLs.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    // Keep the full 16-byte length (a leading zero byte would be stripped in DER).
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

pub(crate) fn check_validity(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(), CertsError> {
    if not_before >= not_after {
        return Err(CertsError::BadValidity {
            not_before,
            not_after,
        });
    }
    Ok(())
}

/// C, ST, L, O, CN in the order openssl scripts produce them; `default_cn` when none given.
pub(crate) fn distinguished_name(
    subject: &Subject,
    default_cn: &str,
) -> Result<DistinguishedName, CertsError> {
    let mut dn = DistinguishedName::new();
    if let Some(country) = non_empty(&subject.country) {
        // X.520 wants countryName as a two-letter PrintableString.
        if country.len() != 2 || !country.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(bad_subject("country", "must be a two-letter ISO 3166 code"));
        }
        let value = rcgen::string::PrintableString::try_from(country.to_ascii_uppercase())
            .map_err(|_| bad_subject("country", "must be a two-letter ISO 3166 code"))?;
        dn.push(DnType::CountryName, DnValue::PrintableString(value));
    }
    if let Some(state) = non_empty(&subject.state) {
        dn.push(DnType::StateOrProvinceName, state);
    }
    if let Some(city) = non_empty(&subject.city) {
        dn.push(DnType::LocalityName, city);
    }
    if let Some(org) = non_empty(&subject.org) {
        dn.push(DnType::OrganizationName, org);
    }
    let cn = non_empty(&subject.cn).unwrap_or(default_cn);
    if cn.is_empty() {
        return Err(bad_subject("cn", "must not be empty"));
    }
    dn.push(DnType::CommonName, cn);
    Ok(dn)
}

fn non_empty(field: &Option<String>) -> Option<&str> {
    field.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn bad_subject(field: &'static str, reason: &str) -> CertsError {
    CertsError::BadSubject {
        field,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_full_length_and_distinct() {
        let a = random_serial().to_bytes();
        let b = random_serial().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        assert_ne!(a, b);
    }

    #[test]
    fn country_must_be_two_letters() {
        let mut s = Subject {
            country: Some("Germany".into()),
            ..Subject::default()
        };
        assert!(distinguished_name(&s, "x").is_err());
        s.country = Some("de".into());
        let dn = distinguished_name(&s, "x").unwrap();
        assert!(dn.get(&DnType::CountryName).is_some());
        assert_eq!(
            dn.get(&DnType::CommonName),
            Some(&DnValue::Utf8String("x".into()))
        );
    }

    #[test]
    fn validity_must_be_ordered() {
        let now = OffsetDateTime::now_utc();
        assert!(check_validity(now, now).is_err());
        assert!(check_validity(now, now + time::Duration::seconds(1)).is_ok());
    }
}
