//! The first bytes of a client connection: direct TLS (PostgreSQL 17, ALPN `postgresql`),
//! SSLRequest answered 'S' or 'N' by client_tls_sslmode, GSSENCRequest always 'N', and the
//! rule that a plaintext startup is refused where TLS is required.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::FrontendError;
use crate::backend::BackendKey;
use crate::config::SslMode;
use crate::protocol::startup::{StartupMessage, StartupPacket, read_startup_packet};
use crate::protocol::{PgError, SqlState};
use crate::state::Generation;
use crate::stats::Metrics;
use crate::stream::Stream;
use crate::tls::acceptor::ALPN_POSTGRESQL;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

pub enum Negotiated {
    Startup {
        stream: Stream,
        startup: StartupMessage,
    },
    Cancel(BackendKey),
}

type Failure = (Option<Stream>, FrontendError);

pub async fn negotiate(
    mut tcp: TcpStream,
    generation: &Generation,
    metrics: &Metrics,
) -> Result<Negotiated, Failure> {
    let config = &generation.config;
    let acceptor = generation.tls.acceptor.clone();

    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => {
            return Err((
                None,
                FrontendError::Protocol(crate::protocol::ProtocolError::Closed),
            ));
        }
        Ok(_) => {}
        Err(e) => return Err((None, FrontendError::Protocol(e.into()))),
    }
    if first[0] == TLS_HANDSHAKE {
        let Some(acceptor) = acceptor else {
            // A TLS ClientHello cannot be answered with a plaintext ErrorResponse.
            return Err((
                None,
                FrontendError::Refused(PgError::fatal(
                    SqlState::PROTOCOL_VIOLATION,
                    "direct TLS connection refused: client_tls_sslmode = disable",
                )),
            ));
        };
        let stream = accept_tls(tcp, acceptor, metrics).await?;
        if alpn(&stream) != Some(ALPN_POSTGRESQL) {
            return Err((
                Some(stream),
                FrontendError::Refused(PgError::fatal(
                    SqlState::PROTOCOL_VIOLATION,
                    "direct TLS connection requires the ALPN protocol \"postgresql\"",
                )),
            ));
        }
        return after_tls(stream).await;
    }

    // At most a GSSENCRequest and an SSLRequest may come before the startup packet.
    for _ in 0..3 {
        let packet = match read_startup_packet(&mut tcp).await {
            Ok(p) => p,
            Err(e) => return Err((Some(Stream::Plain(tcp)), FrontendError::Protocol(e))),
        };
        match packet {
            StartupPacket::GssEncRequest => {
                if let Err(e) = tcp.write_all(b"N").await {
                    return Err((None, FrontendError::Protocol(e.into())));
                }
            }
            StartupPacket::SslRequest => {
                let Some(acceptor) = acceptor.clone() else {
                    if let Err(e) = tcp.write_all(b"N").await {
                        return Err((None, FrontendError::Protocol(e.into())));
                    }
                    continue;
                };
                if let Err(e) = tcp.write_all(b"S").await {
                    return Err((None, FrontendError::Protocol(e.into())));
                }
                let stream = accept_tls(tcp, acceptor, metrics).await?;
                return after_tls(stream).await;
            }
            StartupPacket::Cancel { pid, secret } => {
                return Ok(Negotiated::Cancel(BackendKey { pid, secret }));
            }
            StartupPacket::Startup(startup) => {
                if config.client_tls_sslmode >= SslMode::Require {
                    return Err((
                        Some(Stream::Plain(tcp)),
                        FrontendError::Refused(
                            PgError::fatal(
                                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                                "TLS is required: this pgmoat refuses unencrypted connections",
                            )
                            .with_hint(
                                "connect with sslmode=require or stronger (client_tls_sslmode)",
                            ),
                        ),
                    ));
                }
                return Ok(Negotiated::Startup {
                    stream: Stream::Plain(tcp),
                    startup,
                });
            }
            StartupPacket::UnsupportedVersion { major, minor } => {
                return Err((Some(Stream::Plain(tcp)), unsupported_version(major, minor)));
            }
        }
    }
    Err((
        Some(Stream::Plain(tcp)),
        FrontendError::Refused(PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            "too many negotiation requests before the startup packet",
        )),
    ))
}

async fn accept_tls(
    tcp: TcpStream,
    acceptor: Arc<rustls::ServerConfig>,
    metrics: &Metrics,
) -> Result<Stream, Failure> {
    match crate::tls::accepted::accept(tcp, acceptor).await {
        Ok(tls) => {
            metrics.tls_handshake_ok();
            let stream = Stream::Accepted(Box::new(tls));
            if let Some(info) = stream.tls_info() {
                tracing::debug!(
                    tls = %info.version,
                    cipher = %info.cipher,
                    client_cert = info.peer_subject.as_deref().unwrap_or("none"),
                    "TLS established"
                );
            }
            Ok(stream)
        }
        Err(e) => {
            metrics.tls_handshake_failed(&e);
            Err((None, FrontendError::Tls(e)))
        }
    }
}

fn alpn(stream: &Stream) -> Option<&[u8]> {
    match stream {
        Stream::Accepted(tls) => tls.state().alpn_protocol(),
        _ => None,
    }
}

/// Inside TLS only a startup packet or a cancel may follow.
async fn after_tls(mut stream: Stream) -> Result<Negotiated, Failure> {
    match read_startup_packet(&mut stream).await {
        Ok(StartupPacket::Startup(startup)) => Ok(Negotiated::Startup { stream, startup }),
        Ok(StartupPacket::Cancel { pid, secret }) => {
            Ok(Negotiated::Cancel(BackendKey { pid, secret }))
        }
        Ok(StartupPacket::UnsupportedVersion { major, minor }) => {
            Err((Some(stream), unsupported_version(major, minor)))
        }
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => Err((
            Some(stream),
            FrontendError::Refused(PgError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                "encryption request received inside an encrypted connection",
            )),
        )),
        Err(e) => Err((Some(stream), FrontendError::Protocol(e))),
    }
}

fn unsupported_version(major: u16, minor: u16) -> FrontendError {
    FrontendError::Refused(PgError::fatal(
        SqlState::FEATURE_NOT_SUPPORTED,
        format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"),
    ))
}
