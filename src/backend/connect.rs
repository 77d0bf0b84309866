//! Opening and logging in a server connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256};
use postgres_protocol::message::frontend;
use rustls::client::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::scram_keys::{Binding, KeyedScram, ScramKeys};
use super::{BackendError, BackendKey, ServerConn, ServerState};
use crate::config::{ChannelBinding as ChannelBindingMode, SslMode};
use crate::protocol::error::ErrorFields;
use crate::protocol::frame::{MAX_LOGIN_MESSAGE, read_message};
use crate::protocol::messages::parse_parameter_status;
use crate::stream::Stream;

/// Where and as whom a pool logs in.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendTarget {
    /// The database entry this target comes from (a name, or `*`): it names the server_tls_*
    /// settings that apply.
    pub entry: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Option<String>,
    /// SCRAM keys learnt from a client's login, when auth_file holds only a verifier.
    pub scram_keys: Option<ScramKeys>,
}

impl std::fmt::Debug for BackendTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTarget")
            .field("entry", &self.entry)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("scram_keys", &self.scram_keys.as_ref().map(|_| "***"))
            .finish()
    }
}

impl BackendTarget {
    pub fn addr_string(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

pub struct ConnectOptions<'a> {
    pub sslmode: SslMode,
    /// server_channel_binding.
    pub channel_binding: ChannelBindingMode,
    pub tls: Option<&'a Arc<ClientConfig>>,
    pub tls_epoch: u64,
    pub timeout: Duration,
    pub id: u64,
}

/// Connects, negotiates TLS and logs in, all within `opts.timeout`.
pub async fn connect(
    target: &BackendTarget,
    opts: ConnectOptions<'_>,
) -> Result<ServerConn, BackendError> {
    let addr = target.addr_string();
    match tokio::time::timeout(opts.timeout, connect_inner(target, &opts)).await {
        Ok(result) => result,
        Err(_) => Err(BackendError::Timeout {
            addr,
            secs: opts.timeout.as_secs_f64(),
        }),
    }
}

async fn connect_inner(
    target: &BackendTarget,
    opts: &ConnectOptions<'_>,
) -> Result<ServerConn, BackendError> {
    let addr_str = target.addr_string();
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| BackendError::Connect {
            addr: addr_str.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().map_err(|source| BackendError::Connect {
        addr: addr_str.clone(),
        source,
    })?;
    let stream = negotiate_tls(tcp, (&target.host, target.port), opts).await?;
    let tls = stream.tls_info();
    let mut conn = ServerConn {
        id: opts.id,
        stream,
        read_buf: BytesMut::with_capacity(8192),
        spare_buffers: Default::default(),
        params: Vec::new(),
        initial_params: Vec::new(),
        session_settings: Vec::new(),
        state: ServerState::Idle,
        cancels: Default::default(),
        key: BackendKey { pid: 0, secret: 0 },
        addr: peer,
        created: Instant::now(),
        idle_since: Instant::now(),
        tls,
        tls_epoch: opts.tls_epoch,
        statements: Default::default(),
        polite_close: true,
        permits: Default::default(),
        registration: None,
        endpoint: None,
        host: None,
        role: None,
        recheck_role: false,
    };
    login(&mut conn, target, opts).await?;
    conn.initial_params = conn.params.clone();
    Ok(conn)
}

/// SSLRequest, then TLS as the mode demands. Only allow/prefer may continue in plaintext
/// when the server says 'N', and that is logged as a warning.
pub async fn negotiate_tls(
    mut tcp: TcpStream,
    (host, port): (&str, u16),
    opts: &ConnectOptions<'_>,
) -> Result<Stream, BackendError> {
    let addr = format!("{host}:{port}");
    let (SslMode::Allow
    | SslMode::Prefer
    | SslMode::Require
    | SslMode::VerifyCa
    | SslMode::VerifyFull) = opts.sslmode
    else {
        return Ok(Stream::Plain(tcp));
    };
    let Some(tls) = opts.tls else {
        return Err(BackendError::Tls {
            addr,
            reason: "no TLS configuration loaded".into(),
        });
    };
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    let io_err = |source| BackendError::Connect {
        addr: addr.clone(),
        source,
    };
    tcp.write_all(&req).await.map_err(io_err)?;
    // Exactly one byte: anything after it belongs to the TLS handshake.
    let answer = tcp.read_u8().await.map_err(io_err)?;
    match answer {
        b'S' => {
            let name = server_name(host).map_err(|reason| BackendError::Tls {
                addr: addr.clone(),
                reason,
            })?;
            let tls = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| BackendError::Tls {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            Ok(Stream::Connected(Box::new(tls)))
        }
        b'N' if matches!(opts.sslmode, SslMode::Allow | SslMode::Prefer) => {
            tracing::warn!(
                server = %addr,
                "PostgreSQL refused TLS; continuing in plaintext because server_tls_sslmode allows it"
            );
            Ok(Stream::Plain(tcp))
        }
        _ => Err(BackendError::TlsRefused {
            addr,
            mode: sslmode_name(opts.sslmode),
        }),
    }
}

fn sslmode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Allow => "allow",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned()).map_err(|e| format!("invalid host name {host:?}: {e}"))
}

async fn login(
    conn: &mut ServerConn,
    target: &BackendTarget,
    opts: &ConnectOptions<'_>,
) -> Result<(), BackendError> {
    let addr = target.addr_string();
    let proto = |source| BackendError::Protocol {
        addr: addr.clone(),
        source,
    };
    let mut out = BytesMut::new();
    frontend::startup_message(
        [
            ("user", target.user.as_str()),
            ("database", target.dbname.as_str()),
        ],
        &mut out,
    )
    .map_err(|e| proto(e.into()))?;
    send(conn, &mut out).await.map_err(proto)?;

    let mut scram: Option<ScramSha256> = None;
    let mut keyed: Option<KeyedScram> = None;
    // tls-server-end-point data of PostgreSQL's certificate on this connection.
    let end_point = conn
        .stream
        .peer_certificate()
        .and_then(crate::tls::binding::tls_server_end_point);
    let require = opts.channel_binding == ChannelBindingMode::Require;
    let refuse_unbound = |reason| BackendError::ChannelBindingRequired {
        addr: addr.clone(),
        reason,
    };
    let mut bound = false;
    loop {
        let msg = read_message(&mut conn.stream, &mut conn.read_buf, MAX_LOGIN_MESSAGE)
            .await
            .map_err(proto)?;
        let mut body = msg.body;
        match msg.tag {
            b'R' => {
                if body.len() < 4 {
                    return Err(proto(crate::protocol::ProtocolError::Malformed(
                        "short authentication request",
                    )));
                }
                let code = body.get_u32();
                match code {
                    0 if require && !bound => {
                        return Err(refuse_unbound(
                            "PostgreSQL let pgmoat in without a SCRAM exchange to bind",
                        ));
                    }
                    0 => {}
                    3 | 5 if require => {
                        return Err(refuse_unbound("PostgreSQL asked for a password, not SCRAM"));
                    }
                    3 => {
                        // A password in clear text goes only to a server pgmoat verified: under
                        // require or prefer, a man in the middle would simply ask for it.
                        if !matches!(opts.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) {
                            return Err(BackendError::CleartextRefused {
                                addr: addr.clone(),
                                mode: sslmode_name(opts.sslmode),
                            });
                        }
                        let password = password(target)?;
                        frontend::password_message(password.as_bytes(), &mut out)
                            .map_err(|e| proto(e.into()))?;
                        send(conn, &mut out).await.map_err(proto)?;
                    }
                    5 => {
                        let salt: [u8; 4] = body.get(..4).and_then(|s| s.try_into().ok()).ok_or(
                            proto(crate::protocol::ProtocolError::Malformed("short md5 salt")),
                        )?;
                        let password = password(target)?;
                        let hash = md5_hash(target.user.as_bytes(), password.as_bytes(), salt);
                        frontend::password_message(hash.as_bytes(), &mut out)
                            .map_err(|e| proto(e.into()))?;
                        send(conn, &mut out).await.map_err(proto)?;
                    }
                    10 => {
                        let offered =
                            |m: &str| body[..].split(|&b| b == 0).any(|o| o == m.as_bytes());
                        if !offered(SCRAM_SHA_256) && !offered(SCRAM_SHA_256_PLUS) {
                            return Err(BackendError::UnsupportedAuth {
                                addr: addr.clone(),
                                method: code,
                            });
                        }
                        // libpq's rules: bind when TLS gives data and PostgreSQL offers -PLUS;
                        // 'y' when pgmoat could bind but PostgreSQL did not offer it (so a
                        // stripped offer is caught by PostgreSQL), 'n' without TLS.
                        let plus = opts.channel_binding != ChannelBindingMode::Disable
                            && offered(SCRAM_SHA_256_PLUS);
                        let binding = match (&end_point, plus) {
                            (Some(data), true) => Binding::Bind(data.clone()),
                            (Some(_), false)
                                if opts.channel_binding != ChannelBindingMode::Disable =>
                            {
                                Binding::ClientOnly
                            }
                            _ => Binding::None,
                        };
                        if require && !matches!(binding, Binding::Bind(_)) {
                            return Err(refuse_unbound(if end_point.is_none() {
                                "the connection has no TLS certificate to bind to"
                            } else {
                                "PostgreSQL did not offer SCRAM-SHA-256-PLUS"
                            }));
                        }
                        bound = matches!(binding, Binding::Bind(_));
                        let mechanism = if bound {
                            SCRAM_SHA_256_PLUS
                        } else {
                            SCRAM_SHA_256
                        };
                        match (&target.password, &target.scram_keys) {
                            (None, Some(keys)) => {
                                let client = KeyedScram::new(keys.clone(), binding);
                                frontend::sasl_initial_response(
                                    mechanism,
                                    &client.client_first(),
                                    &mut out,
                                )
                                .map_err(|e| proto(e.into()))?;
                                keyed = Some(client);
                            }
                            _ => {
                                let password = password(target)?;
                                let client =
                                    ScramSha256::new(password.as_bytes(), binding.for_library());
                                frontend::sasl_initial_response(
                                    mechanism,
                                    client.message(),
                                    &mut out,
                                )
                                .map_err(|e| proto(e.into()))?;
                                scram = Some(client);
                            }
                        }
                        send(conn, &mut out).await.map_err(proto)?;
                    }
                    11 | 12 => {
                        let scram_err = |e: std::io::Error| BackendError::Scram {
                            addr: addr.clone(),
                            reason: e.to_string(),
                        };
                        if let Some(client) = keyed.as_mut() {
                            let keyed_err = |reason: String| BackendError::Scram {
                                addr: addr.clone(),
                                reason,
                            };
                            if code == 11 {
                                let message = client.client_final(&body).map_err(keyed_err)?;
                                frontend::sasl_response(&message, &mut out)
                                    .map_err(|e| proto(e.into()))?;
                                send(conn, &mut out).await.map_err(proto)?;
                            } else {
                                client.verify_server_final(&body).map_err(keyed_err)?;
                            }
                            continue;
                        }
                        let Some(client) = scram.as_mut() else {
                            return Err(BackendError::Scram {
                                addr: addr.clone(),
                                reason: "SASL message before SASL started".into(),
                            });
                        };
                        if code == 11 {
                            client.update(&body).map_err(scram_err)?;
                            frontend::sasl_response(client.message(), &mut out)
                                .map_err(|e| proto(e.into()))?;
                            send(conn, &mut out).await.map_err(proto)?;
                        } else {
                            client.finish(&body).map_err(scram_err)?;
                        }
                    }
                    other => {
                        return Err(BackendError::UnsupportedAuth {
                            addr: addr.clone(),
                            method: other,
                        });
                    }
                }
            }
            b'S' => {
                let (name, value) = parse_parameter_status(&body).map_err(proto)?;
                let (name, value) = (name.to_owned(), value.to_owned());
                conn.set_param(&name, &value);
            }
            b'K' => {
                if body.len() >= 8 {
                    conn.key = BackendKey {
                        pid: body.get_i32(),
                        secret: body.get_i32(),
                    };
                }
            }
            b'E' => {
                return Err(BackendError::Server {
                    addr: addr.clone(),
                    fields: ErrorFields::parse(&body),
                });
            }
            b'N' | b'v' => {}
            b'Z' => return Ok(()),
            other => {
                return Err(proto(crate::protocol::ProtocolError::Unexpected {
                    got: other as char,
                    expected: "an authentication or startup message",
                }));
            }
        }
    }
}

fn password(target: &BackendTarget) -> Result<&str, BackendError> {
    target
        .password
        .as_deref()
        .ok_or_else(|| BackendError::NoPassword {
            user: target.user.clone(),
        })
}

async fn send(
    conn: &mut ServerConn,
    out: &mut BytesMut,
) -> Result<(), crate::protocol::ProtocolError> {
    conn.stream.write_all(out).await?;
    conn.stream.flush().await?;
    out.clear();
    Ok(())
}
