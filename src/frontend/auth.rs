//! Authenticating a client on the wire, by auth_type: trust, md5, scram-sha-256 (pgmoat
//! runs the server side of SCRAM against auth_file) or cert (the certificate CN must equal
//! the user name). Failures use PostgreSQL's wording and SQLSTATEs, and never reveal whether
//! the user exists.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::auth::{
    ScramCache, ScramError, ScramSecret, ScramServer, Secret, UserList, cert_common_name, md5_salt,
    verify_md5,
};
use crate::config::AuthType;
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
    pub users: &'a UserList,
    /// Per-process key for the fake SCRAM secret of unknown users.
    pub mock_key: &'a [u8],
    /// SCRAM verifiers derived from plain-text auth_file passwords, made once per user.
    pub scram_cache: &'a ScramCache,
    /// tls-server-end-point data of pgmoat's certificate, when this client came over TLS:
    /// SCRAM-SHA-256-PLUS is offered.
    pub channel_binding: Option<&'a [u8]>,
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
        AuthType::Cert => check_certificate(stream, ctx.user).map(|_| None),
        AuthType::Md5 => match ctx.users.get(ctx.user) {
            // PostgreSQL, too, switches to SCRAM when only a SCRAM verifier is stored.
            Some(Secret::Scram(secret)) => scram(stream, ctx, Some(secret.clone())).await,
            secret => md5(stream, ctx, secret).await.map(|_| None),
        },
        AuthType::ScramSha256 => {
            let secret = ctx.scram_cache.get(ctx.user, ctx.users);
            scram(stream, ctx, secret).await
        }
        AuthType::Hba => Err(FrontendError::Refused(PgError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "auth_type = hba is not available yet",
        ))),
    }
}

fn password_failed(user: &str) -> FrontendError {
    FrontendError::Refused(PgError::fatal(
        SqlState::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    ))
}

fn check_certificate(stream: &Stream, user: &str) -> Result<(), FrontendError> {
    let Some(der) = stream.peer_certificate() else {
        return Err(FrontendError::Refused(PgError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "connection requires a valid client certificate",
        )));
    };
    match cert_common_name(der) {
        Ok(cn) if cn == user => Ok(()),
        Ok(cn) => {
            tracing::info!(user, certificate_cn = %cn, "certificate CN does not match the user name");
            Err(FrontendError::Refused(
                PgError::fatal(
                    SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                    format!("certificate authentication failed for user \"{user}\""),
                )
                .with_detail(format!(
                    "The certificate was issued to \"{cn}\"; auth_type = cert requires the common name to equal the user name."
                )),
            ))
        }
        Err(e) => Err(FrontendError::Refused(PgError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("certificate authentication failed for user \"{user}\": {e}"),
        ))),
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
