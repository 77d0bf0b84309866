//! STUB (replaced by the real pg_hba.conf module on merge).
use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{origin}:{line}: {reason}")]
pub struct HbaError {
    pub origin: String,
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnType {
    Host,
    HostSsl,
    HostNoSsl,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    Trust,
    Reject,
    Md5,
    ScramSha256,
    Cert,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    Optional,
    VerifyCa,
    VerifyFull,
}
#[derive(Debug)]
pub struct HbaRule {
    pub line: usize,
    pub conn: ConnType,
    pub method: HbaMethod,
    pub map: Option<String>,
    pub clientcert: ClientCert,
}
impl HbaRule {
    pub fn describe(&self) -> String {
        format!("line {}", self.line)
    }
}
pub struct HbaRequest<'a> {
    pub tls: bool,
    pub database: &'a str,
    pub user: &'a str,
    pub addr: IpAddr,
}
#[derive(Debug, Default)]
pub struct HbaRules {
    rules: Vec<HbaRule>,
}
impl HbaRules {
    pub fn load(_path: &Path) -> Result<HbaRules, HbaError> {
        Ok(HbaRules::default())
    }
    pub fn rules(&self) -> &[HbaRule] {
        &self.rules
    }
    pub fn find(&self, _req: &HbaRequest) -> Option<&HbaRule> {
        self.rules.first()
    }
    pub fn certificate_optional(&self) -> bool {
        true
    }
    pub fn wants_certificates(&self) -> bool {
        false
    }
    pub fn maps(&self) -> impl Iterator<Item = (&str, usize)> {
        self.rules
            .iter()
            .filter_map(|r| r.map.as_deref().map(|m| (m, r.line)))
    }
}
