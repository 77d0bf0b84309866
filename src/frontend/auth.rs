//! Authenticating a client on the wire, by auth_type: trust, md5, scram-sha-256 (pgmoat
//! runs the server side of SCRAM against auth_file), cert (the certificate's identity must
//! be the user name, or map to it in auth_ident_file) or hba (the first matching rule of
//! auth_hba_file picks one of those, or reject). Failures use PostgreSQL's wording and
//! SQLSTATEs, and never reveal whether the user exists.

use std::net::IpAddr;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::auth::hba::{ClientCert, HbaMethod, HbaRequest, HbaRules};
use crate::auth::ident::IdentMaps;
use crate::auth::{
    ScramCache, ScramError, ScramSecret, ScramServer, Secret, UserList, cert_identities, md5_salt,
    verify_md5,
};
use crate::config::{AuthType, CertIdentity, Config};
use crate::protocol::frame::{MAX_LOGIN_MESSAGE, read_message};
use crate::protocol::messages::{
    authentication_md5, authentication_sasl, authentication_sasl_continue,
    authentication_sasl_final, parse_password_message, parse_sasl_initial_response,
};
use crate::protocol::{PgError, ProtocolError, SqlState};
use crate::state::Generation;
use crate::stream::Stream;

use super::FrontendError;

pub struct AuthContext<'a> {
    pub auth_type: AuthType,
    pub user: &'a str,
    /// The database the client asked for (hba rules match on it).
    pub database: &'a str,
    /// The client's address (hba rules match on it).
    pub addr: IpAddr,
    pub users: &'a UserList,
    /// auth_hba_file's rules, for auth_type = hba.
    pub hba: Option<&'a HbaRules>,
    pub certs: CertCheck<'a>,
    /// Per-process key for the fake SCRAM secret of unknown users.
    pub mock_key: &'a [u8],
    /// SCRAM verifiers derived from plain-text auth_file passwords, made once per user.
    pub scram_cache: &'a ScramCache,
    /// tls-server-end-point data of pgmoat's certificate, when this client came over TLS:
    /// SCRAM-SHA-256-PLUS is offered.
    pub channel_binding: Option<&'a [u8]>,
}

/// How a client certificate's identity is checked against the user name.
#[derive(Clone, Copy)]
pub struct CertCheck<'a> {
    pub identity: CertIdentity,
    pub maps: &'a IdentMaps,
    /// The map for this database (its entry's auth_ident_map, else the global one); an hba
    /// rule's map= wins over it.
    pub map: Option<&'a str>,
}

impl<'a> AuthContext<'a> {
    /// The context of a login to `database` as `user`, from the generation's config and files.
    pub fn new(
        generation: &'a Generation,
        stream: &Stream,
        (user, database): (&'a str, &'a str),
        mock_key: &'a [u8],
    ) -> AuthContext<'a> {
        let config: &'a Config = &generation.config;
        let map = config
            .database(database)
            .and_then(|entry| entry.auth_ident_map.as_deref())
            .or(config.auth_ident_map.as_deref());
        AuthContext {
            auth_type: config.auth_type,
            user,
            database,
            addr: stream
                .tcp()
                .peer_addr()
                .map(|a| a.ip())
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            users: &generation.users,
            hba: generation.hba.as_deref(),
            certs: CertCheck {
                identity: config.auth_cert_identity,
                maps: &generation.ident,
                map,
            },
            mock_key,
            scram_cache: &generation.scram_cache,
            channel_binding: channel_binding(stream, generation),
        }
    }
}

/// What a client's SCRAM exchange binds to: the tls-server-end-point data of the certificate
/// pgmoat presented on this connection (the generation's, which served the handshake), when
/// the client came over TLS.
pub fn channel_binding<'a>(stream: &Stream, generation: &'a Generation) -> Option<&'a [u8]> {
    stream
        .is_accepted_tls()
        .then_some(generation.tls.server_end_point.as_deref())
        .flatten()
}

/// Authenticates the client. After a SCRAM exchange, returns the ClientKey its proof
/// revealed (used to log in to PostgreSQL when auth_file holds only a verifier).
pub async fn authenticate(
    stream: &mut Stream,
    ctx: &AuthContext<'_>,
) -> Result<Option<[u8; 32]>, FrontendError> {
    match ctx.auth_type {
        AuthType::Trust => Ok(None),
        AuthType::Cert => check_certificate(stream, ctx, ctx.certs.map).map(|_| None),
        AuthType::Md5 => md5_or_scram(stream, ctx).await,
        AuthType::ScramSha256 => {
            let secret = ctx.scram_cache.get(ctx.user, ctx.users);
            scram(stream, ctx, secret).await
        }
        AuthType::Hba => by_hba_rule(stream, ctx).await,
    }
}

async fn md5_or_scram(
    stream: &mut Stream,
    ctx: &AuthContext<'_>,
) -> Result<Option<[u8; 32]>, FrontendError> {
    match ctx.users.get(ctx.user) {
        // PostgreSQL, too, switches to SCRAM when only a SCRAM verifier is stored.
        Some(Secret::Scram(secret)) => scram(stream, ctx, Some(secret.clone())).await,
        secret => md5(stream, ctx, secret).await.map(|_| None),
    }
}

/// PostgreSQL's ClientAuthentication over the first matching hba rule: clientcert is checked
/// before the method (a certificate must be there) and, for verify-full, its identity after a
/// password method succeeded.
async fn by_hba_rule(
    stream: &mut Stream,
    ctx: &AuthContext<'_>,
) -> Result<Option<[u8; 32]>, FrontendError> {
    let tls = stream.is_tls();
    let encryption = if tls {
        "SSL encryption"
    } else {
        "no encryption"
    };
    let refused = |verb: &str| {
        FrontendError::Refused(PgError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            format!(
                "{verb} for host \"{}\", user \"{}\", database \"{}\", {encryption}",
                ctx.addr, ctx.user, ctx.database
            ),
        ))
    };
    // Loaded with the generation whenever auth_type = hba; without rules nothing matches.
    let rule = ctx.hba.and_then(|rules| {
        rules.find(&HbaRequest {
            tls,
            database: ctx.database,
            user: ctx.user,
            addr: ctx.addr,
        })
    });
    let Some(rule) = rule else {
        tracing::info!(addr = %ctx.addr, ?ctx.user, ?ctx.database, tls, "no auth_hba_file rule matches");
        return Err(refused("no pg_hba.conf entry"));
    };
    tracing::debug!(rule = %rule.describe(), "auth_hba_file rule");
    let map = rule.map.as_deref().or(ctx.certs.map);
    if rule.clientcert != ClientCert::Optional && stream.peer_certificate().is_none() {
        return Err(no_certificate());
    }
    let key = match rule.method {
        HbaMethod::Reject => return Err(refused("pg_hba.conf rejects connection")),
        HbaMethod::Cert => return check_certificate(stream, ctx, map).map(|_| None),
        HbaMethod::Trust => None,
        HbaMethod::Md5 => md5_or_scram(stream, ctx).await?,
        HbaMethod::ScramSha256 => {
            let secret = ctx.scram_cache.get(ctx.user, ctx.users);
            scram(stream, ctx, secret).await?
        }
    };
    if rule.clientcert == ClientCert::VerifyFull {
        check_certificate(stream, ctx, map)?;
    }
    Ok(key)
}

fn no_certificate() -> FrontendError {
    FrontendError::Refused(PgError::fatal(
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        "connection requires a valid client certificate",
    ))
}

fn password_failed(user: &str) -> FrontendError {
    FrontendError::Refused(PgError::fatal(
        SqlState::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    ))
}

/// The certificate rustls verified must name the user: an identity equal to it, or, with
/// `map`, one the map allows to be it (PostgreSQL's check_usermap). With several identities
/// (SANs of the chosen kind), any one may.
fn check_certificate(
    stream: &Stream,
    ctx: &AuthContext<'_>,
    map: Option<&str>,
) -> Result<(), FrontendError> {
    let user = ctx.user;
    let Some(der) = stream.peer_certificate() else {
        return Err(no_certificate());
    };
    let failed = || {
        PgError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("certificate authentication failed for user \"{user}\""),
        )
    };
    let identities = match cert_identities(der, ctx.certs.identity) {
        Ok(identities) => identities,
        Err(e) => {
            tracing::info!(?user, error = %e, "client certificate names no usable identity");
            return Err(FrontendError::Refused(failed().with_detail(e.to_string())));
        }
    };
    let allowed = |identity: &String| match map {
        Some(map) => ctx.certs.maps.allows(map, identity, user),
        None => identity == user,
    };
    if identities.iter().any(allowed) {
        return Ok(());
    }
    let shown = identities.join(", ");
    match map {
        Some(map) => {
            // PostgreSQL's log line; the client learns nothing about the map.
            tracing::info!(
                "no match in usermap \"{map}\" for user \"{}\" authenticated as \"{}\"",
                user.escape_debug(),
                shown.escape_debug()
            );
            Err(FrontendError::Refused(failed()))
        }
        None => {
            tracing::info!(?user, certificate_identity = %shown.escape_debug(), identity = %ctx.certs.identity, "certificate identity does not match the user name");
            Err(FrontendError::Refused(failed().with_detail(format!(
                "The certificate was issued to \"{shown}\"; without an auth_ident_map the {} must equal the user name.",
                match ctx.certs.identity {
                    CertIdentity::Cn => "common name",
                    _ => "subject alternative name (auth_cert_identity)",
                }
            ))))
        }
    }
}

async fn send(stream: &mut Stream, out: &mut BytesMut) -> Result<(), FrontendError> {
    stream.write_all(out).await.map_err(ProtocolError::from)?;
    stream.flush().await.map_err(ProtocolError::from)?;
    out.clear();
    Ok(())
}

/// Reads the client's 'p' message; anything else is a protocol violation.
async fn read_password_message(stream: &mut Stream) -> Result<BytesMut, FrontendError> {
    let mut buf = BytesMut::new();
    let msg = read_message(stream, &mut buf, MAX_LOGIN_MESSAGE).await?;
    if msg.tag != b'p' {
        return Err(FrontendError::Refused(PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!(
                "expected password response, got message type '{}'",
                msg.tag as char
            ),
        )));
    }
    if !buf.is_empty() {
        return Err(FrontendError::Refused(PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            "unexpected data after the password response",
        )));
    }
    Ok(msg.body)
}

async fn md5(
    stream: &mut Stream,
    ctx: &AuthContext<'_>,
    secret: Option<&Secret>,
) -> Result<(), FrontendError> {
    let salt = md5_salt();
    let mut out = BytesMut::new();
    authentication_md5(&mut out, salt);
    send(stream, &mut out).await?;
    let body = read_password_message(stream).await?;
    let response = parse_password_message(&body)?;
    let ok = match secret {
        Some(secret) => verify_md5(secret, ctx.user, salt, response).unwrap_or(false),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(password_failed(ctx.user))
    }
}

async fn scram(
    stream: &mut Stream,
    ctx: &AuthContext<'_>,
    secret: Option<ScramSecret>,
) -> Result<Option<[u8; 32]>, FrontendError> {
    // Unknown users (and users without a usable secret) run the whole exchange against a
    // fake secret and fail at the end, exactly like a wrong password.
    let known = secret.is_some();
    let secret = secret.unwrap_or_else(|| ScramSecret::mock_for(ctx.user, ctx.mock_key));
    let mut server =
        ScramServer::new(secret).with_channel_binding(ctx.channel_binding.map(<[u8]>::to_vec));
    let mut out = BytesMut::new();
    authentication_sasl(&mut out, server.mechanisms());
    send(stream, &mut out).await?;

    let body = read_password_message(stream).await?;
    let (mechanism, client_first) = parse_sasl_initial_response(&body)?;
    let server_first = server
        .handle_client_first(mechanism, client_first)
        .map_err(|e| scram_failure(e, ctx.user))?;
    authentication_sasl_continue(&mut out, &server_first);
    send(stream, &mut out).await?;

    let body = read_password_message(stream).await?;
    let server_final = server
        .handle_client_final(&body)
        .map_err(|e| scram_failure(e, ctx.user))?;
    if !known {
        return Err(password_failed(ctx.user));
    }
    authentication_sasl_final(&mut out, &server_final);
    send(stream, &mut out).await?;
    Ok(server.client_key())
}

fn scram_failure(err: ScramError, user: &str) -> FrontendError {
    match err {
        ScramError::WrongPassword => password_failed(user),
        ScramError::UnsupportedMechanism => FrontendError::Refused(PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        )),
        other => FrontendError::Refused(PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            other.to_string(),
        )),
    }
}
