//! The column lists of the SHOW commands: PgBouncer's names, order and types (1.25), with
//! pgmoat's additions at the end where it has any, so positional parsers keep working.

use super::result::Type;

use Type::{Int4, Int8, Text, Timestamptz};

pub const POOLS: &[(&str, Type)] = &[
    ("database", Text),
    ("user", Text),
    ("cl_active", Int4),
    ("cl_waiting", Int4),
    ("cl_active_cancel_req", Int4),
    ("cl_waiting_cancel_req", Int4),
    ("sv_active", Int4),
    ("sv_active_cancel", Int4),
    ("sv_being_canceled", Int4),
    ("sv_idle", Int4),
    ("sv_used", Int4),
    ("sv_tested", Int4),
    ("sv_login", Int4),
    ("maxwait", Int4),
    ("maxwait_us", Int4),
    ("pool_mode", Text),
    ("load_balance_hosts", Text),
];

/// SHOW CLIENTS and SHOW SERVERS share one header, as in PgBouncer.
pub const SOCKETS: &[(&str, Type)] = &[
    ("type", Text),
    ("user", Text),
    ("database", Text),
    ("replication", Text),
    ("state", Text),
    ("addr", Text),
    ("port", Int4),
    ("local_addr", Text),
    ("local_port", Int4),
    ("connect_time", Timestamptz),
    ("request_time", Timestamptz),
    ("wait", Int4),
    ("wait_us", Int4),
    ("close_needed", Int4),
    ("ptr", Text),
    ("link", Text),
    ("remote_pid", Int4),
    ("tls", Text),
    ("application_name", Text),
    ("prepared_statements", Int4),
    ("id", Int8),
    // pgmoat's additions: what pg_stat_ssl shows for PostgreSQL.
    ("tls_version", Text),
    ("tls_cipher", Text),
    ("client_cert_subject", Text),
    ("client_cert_not_after", Timestamptz),
    // pgmoat's server lifecycle: its state machine's name for the state, and why a server
    // is pinned to its client (temp_table, advisory_lock, listen, prepare, hold_cursor,
    // session_mode), empty when it is not.
    ("lifecycle", Text),
    ("pinned", Text),
    // For a server: the host (of the database entry's list) it is on, and what the server
    // was at login (primary, standby; "not asked" for a pre-14 server under
    // target_session_attrs = any). Empty for a client.
    ("host", Text),
    ("role", Text),
];

pub const STATS: &[(&str, Type)] = &[
    ("database", Text),
    ("total_server_assignment_count", Int8),
    ("total_xact_count", Int8),
    ("total_query_count", Int8),
    ("total_received", Int8),
    ("total_sent", Int8),
    ("total_xact_time", Int8),
    ("total_query_time", Int8),
    ("total_wait_time", Int8),
    ("total_client_parse_count", Int8),
    ("total_server_parse_count", Int8),
    ("total_bind_count", Int8),
    ("avg_server_assignment_count", Int8),
    ("avg_xact_count", Int8),
    ("avg_query_count", Int8),
    ("avg_recv", Int8),
    ("avg_sent", Int8),
    ("avg_xact_time", Int8),
    ("avg_query_time", Int8),
    ("avg_wait_time", Int8),
    ("avg_client_parse_count", Int8),
    ("avg_server_parse_count", Int8),
    ("avg_bind_count", Int8),
];

pub const STATS_TOTALS: &[(&str, Type)] = &[
    ("database", Text),
    ("server_assignment_count", Int8),
    ("xact_count", Int8),
    ("query_count", Int8),
    ("bytes_received", Int8),
    ("bytes_sent", Int8),
    ("xact_time", Int8),
    ("query_time", Int8),
    ("wait_time", Int8),
    ("client_parse_count", Int8),
    ("server_parse_count", Int8),
    ("bind_count", Int8),
];

pub const STATS_AVERAGES: &[(&str, Type)] = &[
    ("database", Text),
    ("server_assignment_count", Int8),
    ("xact_count", Int8),
    ("query_count", Int8),
    ("bytes_received", Int8),
    ("bytes_sent", Int8),
    ("xact_time", Int8),
    ("query_time", Int8),
    ("wait_time", Int8),
    ("avg_client_parse_count", Int8),
    ("avg_server_parse_count", Int8),
    ("avg_bind_count", Int8),
];

pub const DATABASES: &[(&str, Type)] = &[
    ("name", Text),
    // A host list as configured ("pg1,pg2"), and its ports ("5432" or "5432,5433"): text,
    // since a list is not a number.
    ("host", Text),
    ("port", Text),
    ("database", Text),
    ("force_user", Text),
    ("pool_size", Int4),
    ("min_pool_size", Int4),
    ("reserve_pool_size", Int4),
    ("server_lifetime", Int4),
    ("pool_mode", Text),
    ("load_balance_hosts", Text),
    ("max_connections", Int4),
    ("current_connections", Int4),
    ("max_client_connections", Int4),
    ("current_client_connections", Int4),
    ("paused", Int4),
    ("disabled", Int4),
    // pgmoat's addition: which hosts' servers the entry uses.
    ("target_session_attrs", Text),
];

/// Every host a pool connects to: what its last login found, since when, and how often its
/// role changed (a failover) or a failure was seen there.
pub const HOSTS: &[(&str, Type)] = &[
    ("host", Text),
    ("port", Int4),
    ("status", Text),
    ("since_seconds", Int8),
    ("role_changes", Int8),
    ("failures", Int8),
    ("last_error", Text),
];

pub const CONFIG: &[(&str, Type)] = &[
    ("key", Text),
    ("value", Text),
    ("default", Text),
    ("changeable", Text),
];

pub const LISTS: &[(&str, Type)] = &[("list", Text), ("items", Int4)];

/// Certificates and CRLs. For a CRL, `subject` is its issuer, `serial` its CRL number,
/// `not_after` its next update and `revoked` the number of certificates it revokes.
pub const CERTS: &[(&str, Type)] = &[
    ("setting", Text),
    ("file", Text),
    ("subject", Text),
    ("serial", Text),
    ("not_after", Timestamptz),
    ("days_left", Int8),
    ("kind", Text),
    ("revoked", Int8),
];
