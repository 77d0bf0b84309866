//! One generation of everything a reload replaces: the config, the TLS material both ways and
//! auth_file, loaded and checked as a whole before it is swapped in (a bad one changes
//! nothing). Pools, cancels and sessions read the current generation; this module reads only
//! config, tls and auth.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::auth::hba::{ClientCert, HbaError, HbaMethod, HbaRules};
use crate::auth::ident::{IdentError, IdentMaps};
use crate::auth::{AuthError, ScramCache, UserList};
use crate::config::{AuthType, Config};
use crate::tls::{ClientCerts, TlsError, TlsState};

/// Why a generation could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    // Transparent: main prints the whole source chain.
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("auth_file: {0}")]
    Auth(#[from] AuthError),
    #[error("auth_hba_file: {0}")]
    Hba(#[source] HbaError),
    #[error("auth_ident_file: {0}")]
    Ident(#[source] IdentError),
    /// The files load, but do not fit together or with the config.
    #[error("{0}")]
    Mismatch(String),
}

/// Everything a reload replaces, validated as a whole before it is swapped in.
pub struct Generation {
    pub id: u64,
    pub config: Arc<Config>,
    pub tls: Arc<TlsState>,
    /// Changes only when the TLS material towards PostgreSQL changes, so idle server
    /// connections are retired only when they were made with old certificates.
    pub tls_epoch: u64,
    /// Digest of the PostgreSQL-facing TLS files as they were read for this generation.
    pub server_tls_fingerprint: u64,
    pub users: Arc<UserList>,
    pub scram_cache: ScramCache,
    /// auth_hba_file's rules, when auth_type = hba.
    pub hba: Option<Arc<HbaRules>>,
    /// auth_ident_file's maps (none when it is not set).
    pub ident: Arc<IdentMaps>,
}

/// Loads everything a generation needs from `config`. `previous` keeps the TLS epoch when
/// the PostgreSQL-facing TLS material did not change.
pub fn load_generation(
    config: Config,
    previous: Option<&Generation>,
) -> Result<Generation, LoadError> {
    let hba = match (&config.auth_type, &config.auth_hba_file) {
        (AuthType::Hba, Some(path)) => Some(HbaRules::load(path).map_err(LoadError::Hba)?),
        _ => None,
    };
    let ident = match &config.auth_ident_file {
        Some(path) => IdentMaps::load(path).map_err(LoadError::Ident)?,
        None => IdentMaps::default(),
    };
    check_identity_files(&config, hba.as_ref(), &ident)?;
    let client_certs = match &hba {
        // Insist only when certificates matter and no rule lets a TLS client in without one.
        Some(rules) => ClientCerts::Hba {
            mandatory: rules.wants_certificates() && !rules.certificate_optional(),
        },
        None => ClientCerts::BySslMode,
    };
    let tls = TlsState::load(&config, client_certs)?;
    let users = match &config.auth_file {
        Some(path) => UserList::load(path)?,
        None => UserList::default(),
    };
    let fingerprint = server_tls_fingerprint(&config);
    let (id, tls_epoch) = match previous {
        // Compared with what the previous generation read then, not with the files now.
        Some(prev) if prev.server_tls_fingerprint == fingerprint => (prev.id + 1, prev.tls_epoch),
        Some(prev) => (prev.id + 1, prev.tls_epoch + 1),
        None => (1, 1),
    };
    Ok(Generation {
        id,
        config: Arc::new(config),
        tls: Arc::new(tls),
        tls_epoch,
        server_tls_fingerprint: fingerprint,
        users: Arc::new(users),
        scram_cache: Default::default(),
        hba: hba.map(Arc::new),
        ident: Arc::new(ident),
    })
}

/// What the config check cannot see because it needs the files' contents: every map named
/// exists, and what the hba rules need (passwords, client certificates) is configured.
fn check_identity_files(
    config: &Config,
    hba: Option<&HbaRules>,
    ident: &IdentMaps,
) -> Result<(), LoadError> {
    let hba_file = || {
        config
            .auth_hba_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let ident_file = config
        .auth_ident_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(auth_ident_file is not set)".into());
    let mut named: Vec<(String, &str)> = Vec::new();
    if let Some(map) = &config.auth_ident_map {
        named.push(("auth_ident_map".into(), map));
    }
    for (name, entry) in &config.databases {
        if let Some(map) = &entry.auth_ident_map {
            named.push((format!("databases.{name}.auth_ident_map"), map));
        }
    }
    if let Some(rules) = hba {
        for (map, line) in rules.maps() {
            named.push((format!("auth_hba_file {}:{line}: map", hba_file()), map));
        }
    }
    for (place, map) in named {
        if !ident.has_map(map) {
            return Err(LoadError::Mismatch(format!(
                "{place} = {map}: there is no map \"{map}\" in {ident_file}"
            )));
        }
    }
    let Some(rules) = hba else { return Ok(()) };
    for rule in rules.rules() {
        let passwords = matches!(rule.method, HbaMethod::Md5 | HbaMethod::ScramSha256);
        if passwords && config.auth_file.is_none() {
            return Err(LoadError::Mismatch(format!(
                "auth_hba_file {}, {}: checks passwords, which needs auth_file",
                hba_file(),
                rule.describe()
            )));
        }
        let certificate = rule.method == HbaMethod::Cert || rule.clientcert != ClientCert::Optional;
        if certificate && config.client_tls_ca_file.is_none() {
            return Err(LoadError::Mismatch(format!(
                "auth_hba_file {}, {}: needs client certificates, which needs client_tls_ca_file",
                hba_file(),
                rule.describe()
            )));
        }
    }
    Ok(())
}

/// Identity of the TLS material towards PostgreSQL: modes, CRL policy and the bytes of the
/// files, global and per database entry.
fn server_tls_fingerprint(config: &Config) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!(
        "{:?}{:?}{:?}{:?}",
        config.server_tls_sslmode,
        config.server_tls_protocols,
        config.tls_crl_expired,
        config.tls_crl_unknown_status
    )
    .hash(&mut hasher);
    let mut files = vec![
        &config.server_tls_ca_file,
        &config.server_tls_cert_file,
        &config.server_tls_key_file,
        &config.server_tls_crl_file,
    ];
    for (name, entry) in &config.databases {
        format!("{name}{:?}", entry.server_tls_sslmode).hash(&mut hasher);
        files.extend([
            &entry.server_tls_ca_file,
            &entry.server_tls_cert_file,
            &entry.server_tls_key_file,
        ]);
    }
    for path in files.into_iter().flatten() {
        path.hash(&mut hasher);
        // A CRL directory hashes as its listing; its files are read with it.
        read_for_fingerprint(path).hash(&mut hasher);
    }
    hasher.finish()
}

fn read_for_fingerprint(path: &std::path::Path) -> Vec<u8> {
    if path.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        names
            .iter()
            .flat_map(|p| std::fs::read(p).unwrap_or_default())
            .collect()
    } else {
        std::fs::read(path).unwrap_or_default()
    }
}

/// Logs the days left of every loaded certificate, warning from cert_expiry_warn_days on.
pub fn log_certificate_expiry(generation: &Generation) {
    let warn_days = i64::from(generation.config.cert_expiry_warn_days);
    for cert in &generation.tls.certs {
        let days = cert.days_left();
        if days <= warn_days {
            tracing::warn!(setting = cert.setting, file = %cert.path, subject = %cert.subject, days_left = days, not_after = %cert.not_after, "certificate expires soon");
        } else {
            tracing::info!(setting = cert.setting, file = %cert.path, subject = %cert.subject, days_left = days, "certificate loaded");
        }
    }
    crate::tls::crl::log_crl_state(&generation.tls.crls, generation.config.tls_crl_expired);
}
