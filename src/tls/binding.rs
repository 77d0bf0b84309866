//! SCRAM channel binding data of type `tls-server-end-point` (RFC 5929, section 4.1): the
//! hash of the TLS server's own leaf certificate, with the hash function of the
//! certificate's signature (MD5 and SHA-1 are upgraded to SHA-256). Both sides compute it
//! from the same certificate, so a man in the middle, who must present another certificate,
//! cannot relay a SCRAM exchange. PostgreSQL supports this type only.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// The binding data for a server certificate, or `None` when its signature algorithm has no
/// defined hash (Ed25519, Ed448; RSASSA-PSS, whose hash sits in parameters pgmoat does not
/// read): channel binding is then not offered, as PostgreSQL does not offer it either.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let hash = match oid.as_str() {
        // md5WithRSAEncryption, sha1WithRSAEncryption, ecdsa-with-SHA1: SHA-256 instead.
        "1.2.840.113549.1.1.4" | "1.2.840.113549.1.1.5" | "1.2.840.10045.4.1" => Hash::Sha256,
        // sha256WithRSAEncryption, ecdsa-with-SHA256
        "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" => Hash::Sha256,
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Hash::Sha384,
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Hash::Sha512,
        _ => return None,
    };
    Some(match hash {
        Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm() {
        let p256 = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            tls_server_end_point(&p256),
            Some(Sha256::digest(&p256).to_vec())
        );
        let p384 = self_signed(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(tls_server_end_point(&p384).map(|h| h.len()), Some(48));
        // Ed25519 signatures have no hash of their own: no channel binding.
        let ed = self_signed(&rcgen::PKCS_ED25519);
        assert_eq!(tls_server_end_point(&ed), None);
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
    }
}
