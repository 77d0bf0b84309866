//! Logging a client in: the startup checks (user, database, replication, max_client_conn),
//! authentication, the settings it asked for, and what it is told (ParameterStatus,
//! BackendKeyData) before its first query.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::FrontendError;
use super::auth::{AuthContext, authenticate};
use super::session::{ClientSession, SessionStart};
use crate::admin::AdminSession;
use crate::auth::Secret;
use crate::backend::scram_keys::ScramKeys;
use crate::pool::{PoolKey, PoolSettings};
use crate::protocol::messages::{
    authentication_ok, backend_key_data, negotiate_protocol_version, parameter_status,
    ready_for_query,
};
use crate::protocol::startup::StartupMessage;
use crate::protocol::{PgError, SqlState};
use crate::state::{Generation, Shared};
use crate::stream::Stream;

type Failure = (Option<Stream>, FrontendError);

/// The newest protocol version pgmoat speaks, as NegotiateProtocolVersion carries it.
const PROTOCOL_3_0: u32 = 3 << 16;

async fn write_all_flush(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Startup parameters that are not settings and are never replayed on a server.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// A client past login: a pooled session or an admin console session.
pub enum LoggedIn {
    Pool(Box<ClientSession>),
    Console(AdminSession),
}

impl LoggedIn {
    pub async fn run(self) {
        match self {
            LoggedIn::Pool(mut session) => {
                session.run().await;
                session.finish().await;
            }
            LoggedIn::Console(session) => session.run().await,
        }
    }
}

pub async fn login(
    mut stream: Stream,
    startup: StartupMessage,
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    (id, worker): (u64, usize),
) -> Result<LoggedIn, Failure> {
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
    // As PostgreSQL does: right after the startup packet, before authentication, with the
    // full newest version pgmoat speaks (3.0) and the protocol options it does not know.
    let options = startup.protocol_options();
    if startup.minor > 0 || !options.is_empty() {
        let mut negotiate = BytesMut::new();
        negotiate_protocol_version(&mut negotiate, PROTOCOL_3_0, &options);
        if let Err(e) = write_all_flush(&mut stream, &negotiate).await {
            return Err((None, FrontendError::Protocol(e.into())));
        }
    }
    tracing::Span::current().record("user", user.as_str());
    // Debug formatting: names come from the client, before authentication, and may hold
    // newlines or escapes that would forge log lines.
    tracing::debug!(?user, ?database, "startup");
    if startup
        .param("replication")
        .is_some_and(|v| v != "false" && v != "0" && v != "off")
    {
        refuse!(PgError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported by pgmoat; connect to PostgreSQL directly",
        ));
    }
    // Before max_client_conn: an operator must get in when the pooler is full.
    if crate::admin::is_console_database(&database) {
        return super::console::login(stream, &startup, &user, &database, shared, generation, id)
            .await
            .map(LoggedIn::Console);
    }
    let max_clients = config.max_client_conn;
    let full = || {
        PgError::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            format!("no more connections allowed (max_client_conn = {max_clients})"),
        )
    };
    // Early, to spare the work of authentication; the place is claimed once it succeeded.
    if shared.admission.clients() >= max_clients {
        refuse!(full());
    }
    let Some(settings) = PoolSettings::resolve(config, &generation.users, &database, &user) else {
        refuse!(PgError::fatal(
            SqlState::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        ));
    };

    let ctx = AuthContext::new(generation, &stream, (&user, &database), &shared.mock_key);
    let client_key = match authenticate(&mut stream, &ctx).await {
        Ok(key) => key,
        Err(e) => {
            super::count_auth_failure(shared, &e);
            return Err((Some(stream), e));
        }
    };
    // max_client_conn counts logged-in clients, so a socket that never logs in takes none.
    let Some(client_slot) = shared.admission.claim_client(max_clients) else {
        refuse!(full());
    };
    let mut settings = settings;
    if settings.target.password.is_none()
        && settings.target.user == user
        && let (Some(client_key), Some(Secret::Scram(verifier))) =
            (client_key, generation.users.get(&user))
    {
        // Only a verifier is known: log in to PostgreSQL with the key this client proved.
        settings.target.scram_keys = Some(ScramKeys {
            client_key,
            server_key: verifier.server_key,
            salt: verifier.salt.clone(),
            iterations: verifier.iterations,
        });
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
    let stats = shared.stats.pool(&key);
    let entry = super::register_client(
        shared,
        &stream,
        id,
        (&user, &database, &key.user),
        startup.param("application_name").unwrap_or(""),
    );
    let scram_keys = settings.target.scram_keys.clone();
    // Made for the `*` entry, so forgotten again if this first login fails.
    let auto_pool = (!config.databases.contains_key(&database)).then(|| key.clone());
    let pool = shared.pools.get_or_create(key, settings, worker);
    let session_mode = pool.settings.mode == crate::config::PoolMode::Session;
    // A session-mode client is told the real pid of the server it holds (once it holds
    // one); everyone else gets a key of pgmoat's own.
    let (cancel_key, cancel_slot) = shared.cancel.register();
    let mut session = ClientSession::new(SessionStart {
        stream,
        shared: shared.clone(),
        id,
        worker,
        pool,
        generation: generation.id,
        key: cancel_key,
        cancel: cancel_slot,
        startup: params,
        user,
        database,
        scram_keys,
        pool_statements: config.max_prepared_statements > 0,
        entry,
        stats,
        slot: client_slot,
    });
    let server_params = match session.start().await {
        Ok(params) => params,
        Err(e) => {
            session.fail(e.clone()).await;
            drop(session);
            if let Some(key) = auto_pool
                && shared.pools.forget_failed_auto_pool(&key)
            {
                shared.stats.forget_pool(&key);
            }
            return Err((None, FrontendError::Refused(e)));
        }
    };
    if session_mode && let Some(pid) = session.held_server_pid() {
        let (key, slot) = shared.cancel.register_with_pid(pid);
        session.replace_cancel_key(key, slot);
    }

    let mut out = BytesMut::new();
    authentication_ok(&mut out);
    for (name, value) in &server_params {
        parameter_status(&mut out, name, value);
    }
    backend_key_data(&mut out, session.key.pid, session.key.secret);
    ready_for_query(&mut out, b'I');
    if let Err(e) = session.stream.write_all(&out).await {
        return Err((None, FrontendError::Protocol(e.into())));
    }
    if let Err(e) = session.stream.flush().await {
        return Err((None, FrontendError::Protocol(e.into())));
    }
    tracing::info!(
        user = ?session.user,
        database = ?session.database,
        client_id = id,
        tls = session.stream.tls_info().map(|t| t.version).unwrap_or_else(|| "off".into()),
        "client logged in"
    );
    Ok(LoggedIn::Pool(Box::new(session)))
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
}
