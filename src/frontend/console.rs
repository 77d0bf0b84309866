//! Logging in to the admin console (database `pgbouncer` or `pgmoat`): authenticated like any
//! client, then allowed only for admin_users and stats_users; no server is involved.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::FrontendError;
use super::auth::{AuthContext, authenticate};
use crate::admin::{AdminSession, Role};
use crate::protocol::messages::{
    authentication_ok, backend_key_data, parameter_status, ready_for_query,
};
use crate::protocol::startup::StartupMessage;
use crate::protocol::{PgError, SqlState};
use crate::state::{Generation, Shared};
use crate::stream::Stream;

type Failure = (Option<Stream>, FrontendError);

/// What the console reports at login; server_version in PgBouncer's `x.y.z/bouncer` style.
fn console_params() -> [(&'static str, String); 8] {
    [
        (
            "server_version",
            format!("{}/pgmoat", env!("CARGO_PKG_VERSION")),
        ),
        ("server_encoding", "UTF8".into()),
        ("client_encoding", "UTF8".into()),
        ("DateStyle", "ISO".into()),
        ("TimeZone", "UTC".into()),
        ("IntervalStyle", "postgres".into()),
        ("integer_datetimes", "on".into()),
        ("standard_conforming_strings", "on".into()),
    ]
}

pub async fn login(
    mut stream: Stream,
    startup: &StartupMessage,
    user: &str,
    database: &str,
    shared: &Arc<Shared>,
    generation: &Arc<Generation>,
    id: u64,
) -> Result<AdminSession, Failure> {
    let config = &generation.config;

    let ctx = AuthContext::new(generation, &stream, (user, database), &shared.mock_key);
    if let Err(e) = authenticate(&mut stream, &ctx).await {
        super::count_auth_failure(shared, &e);
        return Err((Some(stream), e));
    }
    let Some(role) = Role::of(config, user) else {
        shared.metrics.auth_failed();
        return Err((
            Some(stream),
            FrontendError::Refused(
                PgError::fatal(SqlState::INVALID_AUTHORIZATION_SPECIFICATION, "not allowed")
                    .with_detail(format!(
                        "user \"{user}\" is in neither admin_users nor stats_users, so it may not use the admin console"
                    )),
            ),
        ));
    };
    let application_name = startup.param("application_name").unwrap_or("");
    let registration = super::register_client(
        shared,
        &stream,
        id,
        (user, database, user),
        application_name,
    );

    let mut out = BytesMut::new();
    authentication_ok(&mut out);
    for (name, value) in console_params() {
        parameter_status(&mut out, name, &value);
    }
    parameter_status(&mut out, "application_name", application_name);
    // Cancel requests for this key find nothing and are ignored: there is nothing to cancel.
    backend_key_data(&mut out, rand::random::<i32>() & i32::MAX, rand::random());
    ready_for_query(&mut out, b'I');
    if let Err(e) = stream.write_all(&out).await {
        return Err((None, FrontendError::Protocol(e.into())));
    }
    if let Err(e) = stream.flush().await {
        return Err((None, FrontendError::Protocol(e.into())));
    }
    tracing::info!(
        ?user,
        ?database,
        ?role,
        client_id = id,
        "admin console login"
    );
    Ok(AdminSession::new(
        stream,
        shared.clone(),
        role,
        registration,
    ))
}
