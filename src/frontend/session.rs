//! A logged-in client: the startup checks, the parameters it is told, and the loop that
//! borrows a server per transaction (transaction mode) or per session (session mode).

use std::future::poll_fn;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::FrontendError;
use super::auth::{AuthContext, authenticate};
use crate::backend::{BackendKey, ServerConn};
use crate::cancel::{CancelTarget, send_cancel};
use crate::config::PoolMode;
use crate::pool::{PoolKey, PoolSettings, ServerObject, ServerPool};
use crate::protocol::messages::{
    authentication_ok, backend_key_data, negotiate_protocol_version, parameter_status,
    ready_for_query,
};
use crate::protocol::startup::StartupMessage;
use crate::protocol::{PgError, SqlState};
use crate::relay::prepared::ClientStatements;
use crate::relay::translate::{IdleBatch, answer_locally, classify_idle};
use crate::relay::{HalfBuffer, Relay, RelayEnd, SessionChanges, TxState};
use crate::state::{Generation, Shared};
use crate::stream::Stream;

type Failure = (Option<Stream>, FrontendError);

/// Startup parameters that are not settings and are never replayed on a server.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

pub struct ClientSession {
    stream: Stream,
    shared: Arc<Shared>,
    generation: Arc<Generation>,
    pool: Arc<ServerPool>,
    key: BackendKey,
    /// Settings the client asked for (startup packet, its own SETs), replayed on whichever
    /// server it gets.
    params: Vec<(String, String)>,
    user: String,
    database: String,
    /// Named prepared statements (transaction mode with max_prepared_statements > 0).
    statements: ClientStatements,
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.shared.cancel.unregister(self.key);
    }
}

pub async fn login(
    mut stream: Stream,
    startup: StartupMessage,
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    id: u64,
) -> Result<ClientSession, Failure> {
    let config = &generation.config;
    macro_rules! refuse {
        ($err:expr) => {
            return Err((Some(stream), FrontendError::Refused($err)))
        };
    }
    let Some(user) = startup.param("user").map(str::to_owned) else {
        refuse!(PgError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "no PostgreSQL user name specified in startup packet",
        ));
    };
    let database = startup.param("database").unwrap_or(&user).to_owned();
    tracing::Span::current().record("user", user.as_str());
    tracing::debug!(%user, %database, "startup");
    if startup
        .param("replication")
        .is_some_and(|v| v != "false" && v != "0" && v != "off")
    {
        refuse!(PgError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported by pgmoat; connect to PostgreSQL directly",
        ));
    }
    let max_clients = config.max_client_conn;
    if shared.clients.load(std::sync::atomic::Ordering::Relaxed) > max_clients {
        refuse!(PgError::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            format!("no more connections allowed (max_client_conn = {max_clients})"),
        ));
    }
    let Some(settings) = PoolSettings::resolve(config, &generation.users, &database, &user) else {
        refuse!(PgError::fatal(
            SqlState::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        ));
    };

    let ctx = AuthContext {
        auth_type: config.auth_type,
        user: &user,
        users: &generation.users,
        mock_key: &shared.mock_key,
    };
    if let Err(e) = authenticate(&mut stream, &ctx).await {
        return Err((Some(stream), e));
    }

    let mut params: Vec<(String, String)> = startup
        .params
        .iter()
        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_."))
        // "auto" is only meaningful in a startup packet; the server's choice stands.
        .filter(|(k, v)| {
            !(k.eq_ignore_ascii_case("client_encoding") && v.eq_ignore_ascii_case("auto"))
        })
        .cloned()
        .collect();
    if let Some(options) = startup.param("options") {
        match parse_options(options) {
            Ok(opts) => params.extend(opts),
            Err(msg) => refuse!(PgError::fatal(SqlState::FEATURE_NOT_SUPPORTED, msg)),
        }
    }

    let key = PoolKey {
        database: database.clone(),
        user: settings.target.user.clone(),
    };
    let pool = shared.pools.get_or_create(key, settings);
    let server_params = match pool.startup_params() {
        Some(p) => p,
        None => match pool.checkout(generation).await {
            // The first client of a pool proves the server login works before it is told
            // it is in, and learns what to report (server_version and so on).
            Ok(obj) => obj.initial_params.clone(),
            Err(e) => refuse!(e),
        },
    };

    let cancel_key = shared.cancel.register();
    let mut out = BytesMut::new();
    let options = startup.protocol_options();
    if startup.minor > 0 || !options.is_empty() {
        negotiate_protocol_version(&mut out, 0, &options);
    }
    authentication_ok(&mut out);
    for (name, value) in &server_params {
        let value = params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .unwrap_or(value);
        parameter_status(&mut out, name, value);
    }
    backend_key_data(&mut out, cancel_key.pid, cancel_key.secret);
    ready_for_query(&mut out, b'I');
    let session = ClientSession {
        stream,
        shared: shared.clone(),
        generation: generation.clone(),
        pool,
        key: cancel_key,
        params,
        user,
        database,
        statements: ClientStatements::default(),
    };
    let mut session = session;
    if let Err(e) = session.stream.write_all(&out).await {
        return Err((None, FrontendError::Protocol(e.into())));
    }
    if let Err(e) = session.stream.flush().await {
        return Err((None, FrontendError::Protocol(e.into())));
    }
    tracing::info!(
        user = %session.user,
        database = %session.database,
        client_id = id,
        tls = session.stream.tls_info().map(|t| t.version).unwrap_or_else(|| "off".into()),
        "client logged in"
    );
    Ok(session)
}

/// `options` of the startup packet: `-c name=value` and `--name=value`, space-separated
/// (backslash escapes a space), as PostgreSQL reads them.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut iter = words.into_iter();
    while let Some(w) = iter.next() {
        let setting = if w == "-c" {
            iter.next().ok_or("startup option -c needs name=value")?
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_owned()
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_owned()
        } else {
            return Err(format!(
                "unsupported startup option \"{w}\": pgmoat passes only -c name=value settings"
            ));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("startup option \"{setting}\" is not name=value"))?;
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

impl ClientSession {
    pub async fn run(mut self) {
        let mode = self.pool.settings.mode;
        let max_prepared = self.generation.config.max_prepared_statements;
        let pool_statements = max_prepared > 0;
        let mut client_half = HalfBuffer::new();
        let mut server_half = HalfBuffer::new();
        loop {
            let mut tx = TxState::default();
            // Idle: wait until the client sends something before taking a server.
            while !client_half.has_header() {
                let read = tokio::select! {
                    read = poll_fn(|cx| client_half.poll_fill(cx, &mut self.stream, 0)) => read,
                    _ = self.shared.shutdown.cancelled() => {
                        self.fail(PgError::fatal(SqlState::ADMIN_SHUTDOWN, "pgmoat is shutting down")).await;
                        return;
                    }
                };
                match read {
                    Ok(0) => {
                        tracing::debug!("client disconnected");
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "client connection lost");
                        return;
                    }
                }
            }
            if client_half.starts_with_terminate() {
                tracing::debug!("client terminated");
                return;
            }
            if pool_statements && mode == PoolMode::Transaction {
                match classify_idle(&client_half.buf) {
                    IdleBatch::Local { len, .. } => {
                        let batch = client_half.buf.split_to(len);
                        let mut reply = BytesMut::new();
                        if let Err(e) = answer_locally(&batch, &mut self.statements, &mut reply) {
                            self.fail(PgError::fatal(SqlState::PROTOCOL_VIOLATION, e.to_string()))
                                .await;
                            return;
                        }
                        if self.stream.write_all(&reply).await.is_err()
                            || self.stream.flush().await.is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    IdleBatch::NeedMore => {
                        // Force another read: pretend no header is there yet.
                        let read =
                            poll_fn(|cx| client_half.poll_fill(cx, &mut self.stream, 0)).await;
                        if !matches!(read, Ok(n) if n > 0) {
                            return;
                        }
                        continue;
                    }
                    IdleBatch::Server => {}
                }
            }

            let mut server = match self.pool.checkout(&self.generation).await {
                Ok(server) => server,
                Err(e) => {
                    self.fail(e).await;
                    return;
                }
            };
            if let Err(e) = self.sync_params(&mut server).await {
                tracing::warn!(error = %e, "could not apply the client's settings on a server connection");
                server.discard();
                self.fail(e).await;
                return;
            }
            self.shared.cancel.set_target(
                self.key,
                Some(CancelTarget {
                    target: self.pool.settings.target.clone(),
                    server_key: server.key,
                }),
            );
            server_half.take_leftover(&mut server.read_buf);
            let mut changes = SessionChanges::default();
            let end = Relay {
                client: &mut self.stream,
                client_half: &mut client_half,
                server: &mut server,
                server_half: &mut server_half,
                tx: &mut tx,
                changes: &mut changes,
                release_when_idle: mode == PoolMode::Transaction,
                statements: (pool_statements && mode == PoolMode::Transaction)
                    .then_some((&mut self.statements, max_prepared)),
                completions: Default::default(),
            }
            .run()
            .await;
            self.shared.cancel.set_target(self.key, None);
            self.remember(changes);

            match end {
                RelayEnd::Released => {
                    release(server).await;
                }
                RelayEnd::ClientTerminated { server_clean } => {
                    finish(server, server_clean, mode, &self.generation).await;
                    tracing::debug!("client terminated");
                    return;
                }
                RelayEnd::ClientGone {
                    server_clean,
                    error,
                } => {
                    if !server_clean {
                        tracing::info!(
                            "client disconnected with a transaction or query in progress; closing its server connection"
                        );
                    }
                    finish(server, server_clean, mode, &self.generation).await;
                    if let Some(e) = error.filter(|e| !e.is_closed()) {
                        self.fail(PgError::fatal(
                            SqlState::PROTOCOL_VIOLATION,
                            format!("invalid message from client: {e}"),
                        ))
                        .await;
                    }
                    return;
                }
                RelayEnd::ServerGone(e) => {
                    tracing::warn!(error = %e, server_id = server.id, "server connection lost during a query");
                    server.discard();
                    self.fail(PgError::fatal(
                        SqlState::CONNECTION_FAILURE,
                        "server closed the connection unexpectedly",
                    )
                    .with_detail("The PostgreSQL server connection failed while this client was using it; the transaction is lost.")).await;
                    return;
                }
            }
        }
    }

    /// Applies the client's settings on the server where they differ, and puts back the
    /// server's own values of settings an earlier client chose (startup parameters, options,
    /// its re-applied SETs) that this client did not: sync_params never marks the server
    /// dirty, so nothing else would undo them. set_config takes a value as a startup packet
    /// gives it (`SET x = 'a,b'` would make a list setting one quoted element).
    async fn sync_params(&self, server: &mut ServerConn) -> Result<(), PgError> {
        let set = |name: &str, value: &str| {
            format!(
                "SELECT pg_catalog.set_config({}, {}, false);",
                quote_literal(name),
                quote_literal(value)
            )
        };
        let mut sql = String::new();
        for (name, value) in &self.params {
            if server.param(name) != Some(value.as_str()) {
                sql.push_str(&set(name, value));
            }
        }
        for (name, value) in &server.params {
            if self
                .params
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(name))
            {
                continue;
            }
            match server
                .initial_params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
            {
                Some((_, initial)) if initial == value => {}
                Some((_, initial)) => sql.push_str(&set(name, initial)),
                None => sql.push_str(&format!("RESET {};", quote_ident(name))),
            }
        }
        if sql.is_empty() {
            return Ok(());
        }
        server
            .simple_query(&sql)
            .await
            .map_err(|e| e.to_pg_error())?;
        // Recorded as the client spelt them, so the next checkout compares equal.
        server.params = server.initial_params.clone();
        for (name, value) in &self.params {
            server.set_param(name, value);
        }
        Ok(())
    }

    fn remember(&mut self, changes: SessionChanges) {
        for (name, value) in changes.params {
            match self
                .params
                .iter_mut()
                .find(|(k, _)| k.eq_ignore_ascii_case(&name))
            {
                Some((_, v)) => *v = value,
                None => {
                    // A reported setting the client never asked for changed: only keep it if
                    // it differs from what the pool's servers start with.
                    let initial = self.pool.startup_params();
                    let default = initial.as_ref().and_then(|p| {
                        p.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
                            .map(|(_, v)| v.clone())
                    });
                    if default.as_deref() != Some(value.as_str()) {
                        self.params.push((name, value));
                    }
                }
            }
        }
    }

    async fn fail(&mut self, err: PgError) {
        tracing::info!(error = %err, "closing client connection");
        let _ = self.stream.write_all(&err.to_bytes()).await;
        let _ = self.stream.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// Transaction mode: the transaction is over. A server whose session state a client changed
/// is reset first, so the next client cannot inherit it.
async fn release(mut server: ServerObject) {
    if !server.dirty {
        return;
    }
    if let Err(e) = reset(&mut server, "RESET ALL").await {
        tracing::warn!(error = %e, "resetting a server connection failed; closing it");
        server.discard();
    }
}

/// The client is gone. A clean server goes back to the pool (after server_reset_query in
/// session mode); anything else is closed, so no half-finished transaction is handed on.
async fn finish(mut server: ServerObject, clean: bool, mode: PoolMode, generation: &Generation) {
    if !clean {
        server.discard();
        return;
    }
    let reset_query = generation.config.server_reset_query.trim();
    let query = match mode {
        PoolMode::Session if !reset_query.is_empty() => Some(reset_query),
        _ if server.dirty => Some("RESET ALL"),
        _ => None,
    };
    if let Some(query) = query
        && let Err(e) = reset(&mut server, query).await
    {
        tracing::warn!(error = %e, "resetting a server connection failed; closing it");
        server.discard();
    }
}

async fn reset(server: &mut ServerConn, query: &str) -> Result<(), crate::backend::BackendError> {
    server.simple_query(query).await?;
    server.params = server.initial_params.clone();
    server.dirty = false;
    Ok(())
}

pub async fn forward_cancel(shared: &Arc<Shared>, key: BackendKey) {
    let Some(target) = shared.cancel.lookup(key) else {
        tracing::debug!("cancel request for an unknown key or an idle client; ignored");
        return;
    };
    let generation = shared.snapshot();
    match send_cancel(&target, &generation).await {
        Ok(()) => tracing::info!(
            server_pid = target.server_key.pid,
            "cancel request forwarded"
        ),
        Err(e) => tracing::warn!(error = %e, "forwarding a cancel request failed"),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_options_parse_like_postgresql() {
        assert_eq!(
            parse_options("-c search_path=app -c statement_timeout=5s --work-mem=8MB").unwrap(),
            vec![
                ("search_path".into(), "app".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "8MB".into())
            ]
        );
        assert_eq!(
            parse_options("-capplication_name=a\\ b").unwrap(),
            vec![("application_name".into(), "a b".into())]
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-c novalue").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("Time\"Zone"), "\"Time\"\"Zone\"");
    }
}
