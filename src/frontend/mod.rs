//! One client connection: negotiate (SSLRequest / GSSENCRequest / direct TLS, by
//! client_tls_sslmode), log in (startup packet, authentication), then the idle/active loop
//! that borrows a server for each transaction (or the whole session).

mod aborted;
mod auth;
mod console;
mod login;
mod negotiate;
mod server_state;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::protocol::{PgError, ProtocolError};
use crate::state::Shared;
use crate::stats::{ClientEntry, ClientRegistration, TlsSummary};
use crate::stream::Stream;

pub use negotiate::Negotiated;

/// Why a client connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// Refused with an ErrorResponse the client should see.
    #[error("{0}")]
    Refused(PgError),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("client_login_timeout expired before the client logged in")]
    LoginTimeout,
    #[error(
        "dropped before it logged in: max_pending_logins connections were logging in, and this was the oldest"
    )]
    LoginDropped,
}

impl From<PgError> for FrontendError {
    fn from(e: PgError) -> Self {
        FrontendError::Refused(e)
    }
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// listen_port: clients (and their cancel requests).
    Clients,
    /// peer_listen_port: cancel requests forwarded by other pgmoat instances, nothing
    /// else (it stays open while SIGTERM waits for the clients to leave, so that cancels
    /// for them still arrive, and must not take new sessions then).
    Peers,
}

/// Runs one client connection to its end. Never panics on client input; every refusal the
/// protocol allows is sent as an ErrorResponse, and every end is logged with the peer.
/// `worker` is the worker thread it runs on, which picks its pool's share.
pub async fn handle_client(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    worker: usize,
    door: Door,
) {
    let id = shared.next_id();
    let span = tracing::info_span!("client", id, %peer, user = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let generation = shared.snapshot();
        let login_timeout = generation.config.client_login_timeout.non_zero();
        let (pending, evicted) = shared
            .admission
            .start_login(generation.config.max_pending_logins);
        if evicted > 0 {
            shared.metrics.logins_dropped(evicted);
        }

        // Boxed, so that the handshake's and login's state (several KiB, most of this
        // future) is freed once the client is logged in instead of staying in the task of
        // every idle client.
        let login = Box::pin(async {
            let negotiated = negotiate::negotiate(tcp, &generation, &shared.metrics).await;
            match negotiated {
                Ok(Negotiated::Cancel(key)) => {
                    crate::cancel::forward_cancel(
                        &shared.cancel,
                        &shared.metrics,
                        &generation,
                        key,
                    )
                    .await;
                    Ok(None)
                }
                Ok(Negotiated::Startup { stream, .. }) if door == Door::Peers => Err((
                    Some(stream),
                    FrontendError::Refused(PgError::fatal(
                        crate::protocol::SqlState::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
                        "this is pgmoat's peer port (peer_listen_port): it takes cancel requests from other pgmoat instances only; connect to listen_port",
                    )),
                )),
                Ok(Negotiated::Startup { stream, startup }) => {
                    login::login(stream, startup, &shared, &generation, (id, worker))
                        .await
                        .map(Some)
                }
                Err((stream, err)) => Err((stream, err)),
            }
        });
        let timed = async {
            match login_timeout {
                Some(limit) => match tokio::time::timeout(limit, login).await {
                    Ok(result) => result,
                    Err(_) => Err((None, FrontendError::LoginTimeout)),
                },
                None => login.await,
            }
        };
        // client_login_timeout runs from accept; a newer connection may push this one out
        // while it is still logging in (the connection just closes: it may not even have
        // sent a startup packet to be answered).
        let logged_in = tokio::select! {
            result = timed => result,
            _ = pending.pushed_out() => Err((None, FrontendError::LoginDropped)),
        };
        drop(pending);
        match logged_in {
            Ok(Some(session)) => Box::pin(session.run()).await,
            Ok(None) => {}
            Err((stream, err)) => refuse(stream, err).await,
        }
    }
    .instrument(span)
    .await
}

/// Counts a login refused by authentication (not one the client simply abandoned, as psql
/// does when it first tries without a password).
fn count_auth_failure(shared: &Shared, err: &FrontendError) {
    if matches!(err, FrontendError::Refused(_)) {
        shared.metrics.auth_failed();
    }
}

/// Lists a logged-in client in SHOW CLIENTS until the registration is dropped.
/// `names` is (user, database, pool user).
fn register_client(
    shared: &Shared,
    stream: &Stream,
    id: u64,
    names: (&str, &str, &str),
    application_name: &str,
) -> ClientRegistration {
    let (user, database, pool_user) = names;
    let tcp = stream.tcp();
    let peer = tcp
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let tls = stream
        .tls_info()
        .map(|info| TlsSummary::new(&info, stream.peer_certificate()));
    shared.stats.clients.register(
        id,
        ClientEntry::new(
            id,
            peer,
            tcp.local_addr().ok(),
            user.to_owned(),
            database.to_owned(),
            pool_user.to_owned(),
            application_name.to_owned(),
            tls,
        ),
    )
}

/// Logs why a client was turned away and, where the protocol allows, tells it.
async fn refuse(stream: Option<Stream>, err: FrontendError) {
    match &err {
        FrontendError::Refused(e) => {
            // Escaped: a refusal may quote what the client sent (a database name).
            tracing::info!(error = %e.to_string().escape_debug(), "client refused")
        }
        FrontendError::Protocol(e) if e.is_closed() => {
            tracing::debug!("client closed the connection before logging in")
        }
        // Under a flood of sockets that never log in, one line each would flood the log;
        // pgmoat_logins_dropped_total counts them.
        FrontendError::LoginDropped => tracing::debug!(error = %err, "client connection dropped"),
        other => tracing::info!(error = %other, "client connection failed"),
    }
    let Some(mut stream) = stream else { return };
    let message = match err {
        FrontendError::Refused(e) => e,
        FrontendError::Protocol(ProtocolError::Closed) | FrontendError::Tls(_) => return,
        FrontendError::Protocol(e) => PgError::fatal(
            crate::protocol::SqlState::PROTOCOL_VIOLATION,
            format!("invalid startup packet or message: {e}"),
        ),
        FrontendError::LoginTimeout | FrontendError::LoginDropped => return,
    };
    let _ = stream.write_all(&message.to_bytes()).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}
