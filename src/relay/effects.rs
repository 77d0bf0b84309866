//! What a statement may do to its session beyond its transaction, from a keyword scan of its
//! SQL text (Query and Parse messages, once per Parse for prepared statements) and from the
//! command tags the server answers with. The scan is conservative and cheap: one pass over
//! the bytes that skips literals, quoted identifiers and comments and looks only at words at
//! the start of a statement and at words followed by `(`. Plain SELECT / INSERT / UPDATE /
//! DELETE traffic calling common built-ins yields nothing and costs nothing more.
//!
//! - `TEMP`: `CREATE [GLOBAL|LOCAL] TEMP[ORARY] ...`, `SELECT ... INTO TEMP`, a `pg_temp.`
//!   name in a CREATE.
//! - `ADVISORY_LOCK`: `pg_advisory_lock[_shared]`, `pg_try_advisory_lock[_shared]` (the
//!   `_xact_` variants end with the transaction and are harmless).
//! - `LISTEN`, `SQL_PREPARE` (`PREPARE name`, not `PREPARE TRANSACTION`), `HOLD_CURSOR`
//!   (`DECLARE ... WITH HOLD`).
//! - `SESSION_SET`: `SET` (not `SET LOCAL` / `TRANSACTION` / `CONSTRAINTS`, which are
//!   `LOCAL_SET`), `RESET`, `DISCARD`, `set_config(...)`.
//! - `RELEASE`: may free session state: `DISCARD`, `DEALLOCATE`, `CLOSE`, `UNLISTEN`, `DROP`,
//!   `pg_advisory_unlock*`.
//! - `UNKNOWN`: the scan cannot tell: `DO`, `CALL`, `LOAD`, a statement it does not know, a
//!   function outside [`SAFE_FUNCTIONS`] (functions are how state is made from inside), a
//!   text too big to scan.
//!
//! A transaction with any of these (but `LOCAL_SET`, and `RELEASE` unless its client is
//! pinned) is checked against PostgreSQL after it ends, one round trip (see
//! `backend::probe`); PostgreSQL's answer, not this scan, decides what is pinned. State that
//! triggers make inside plain DML is not seen (documented in the README).

use crate::backend::PinReasons;
use crate::protocol::{PgError, SqlState};

bitflags::bitflags! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Effects: u16 {
        const TEMP = 1;
        const ADVISORY_LOCK = 1 << 1;
        const LISTEN = 1 << 2;
        const SQL_PREPARE = 1 << 3;
        const HOLD_CURSOR = 1 << 4;
        const SESSION_SET = 1 << 5;
        const LOCAL_SET = 1 << 6;
        const RELEASE = 1 << 7;
        const UNKNOWN = 1 << 8;
        /// COMMIT, END, COMMIT PREPARED or PREPARE TRANSACTION: no session state, but a
        /// server lost while one is unanswered may or may not have committed. Cleared once
        /// every batch is answered (see `relay::tx`).
        const COMMIT = 1 << 9;
    }
}

impl Effects {
    /// What would pin the client's server if it ran.
    pub const PINS: Effects = Effects::TEMP
        .union(Effects::ADVISORY_LOCK)
        .union(Effects::LISTEN)
        .union(Effects::SQL_PREPARE)
        .union(Effects::HOLD_CURSOR);

    /// A statement too big to scan: anything, a COMMIT included.
    pub const UNSEEN: Effects = Effects::UNKNOWN.union(Effects::COMMIT);

    /// The pin reasons a statement with these effects would create.
    pub fn pin_reasons(self) -> PinReasons {
        let mut why = PinReasons::empty();
        for (effect, reason) in [
            (Effects::TEMP, PinReasons::TEMP_TABLE),
            (Effects::ADVISORY_LOCK, PinReasons::ADVISORY_LOCK),
            (Effects::LISTEN, PinReasons::LISTEN),
            (Effects::SQL_PREPARE, PinReasons::SQL_PREPARE),
            (Effects::HOLD_CURSOR, PinReasons::HOLD_CURSOR),
        ] {
            if self.contains(effect) {
                why |= reason;
            }
        }
        why
    }

    /// Whether a transaction with these effects must be checked against PostgreSQL when it
    /// ends (for a client whose server is `pinned` already, also whether state may be gone).
    #[inline]
    pub fn needs_probe(self, pinned: bool) -> bool {
        self.intersects(Effects::PINS | Effects::SESSION_SET | Effects::UNKNOWN)
            || (pinned && self.contains(Effects::RELEASE))
    }

    /// What a CommandComplete tag adds to what the scan saw: a safety net for statements the
    /// scan could not see whole.
    #[inline]
    pub fn from_command_tag(tag: &[u8], seen: Effects) -> Effects {
        let starts = |prefix: &[u8]| tag.starts_with(prefix);
        match tag.first() {
            Some(b'S') if starts(b"SET\0") || starts(b"SET") && tag.len() <= 4 => {
                // SET LOCAL answers "SET" too; only a SET the scan did not explain counts.
                if seen.intersects(Effects::SESSION_SET | Effects::LOCAL_SET) {
                    Effects::empty()
                } else {
                    Effects::SESSION_SET
                }
            }
            Some(b'R') if starts(b"RESET") => Effects::SESSION_SET,
            Some(b'D') if starts(b"DISCARD") => Effects::SESSION_SET | Effects::RELEASE,
            Some(b'D') if starts(b"DEALLOCATE") || starts(b"DROP") => Effects::RELEASE,
            Some(b'C') if starts(b"CLOSE") => Effects::RELEASE,
            Some(b'U') if starts(b"UNLISTEN") => Effects::RELEASE,
            Some(b'L') if starts(b"LISTEN") => Effects::LISTEN,
            Some(b'P') if starts(b"PREPARE\0") => Effects::SQL_PREPARE,
            Some(b'D') if starts(b"DECLARE CURSOR") && !seen.contains(Effects::HOLD_CURSOR) => {
                // The tag does not say WITH HOLD; only an unseen DECLARE is in doubt.
                if seen.is_empty() {
                    Effects::UNKNOWN
                } else {
                    Effects::empty()
                }
            }
            _ => Effects::empty(),
        }
    }
}

/// Built-in functions that cannot create session state, by lower-case name, sorted (binary
/// search). Type names with modifiers (`numeric(10,2)`) are here too, as the scan cannot tell
/// them from calls. A function not listed makes a transaction `UNKNOWN`: checked afterwards.
pub const SAFE_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "any_value",
    "array_agg",
    "array_append",
    "array_cat",
    "array_length",
    "array_position",
    "array_positions",
    "array_prepend",
    "array_remove",
    "array_replace",
    "array_to_json",
    "array_to_string",
    "avg",
    "bit",
    "bit_length",
    "bool_and",
    "bool_or",
    "bpchar",
    "btrim",
    "cardinality",
    "cast",
    "ceil",
    "ceiling",
    "char",
    "char_length",
    "character",
    "character_length",
    "chr",
    "clock_timestamp",
    "coalesce",
    "col_description",
    "concat",
    "concat_ws",
    "convert_from",
    "convert_to",
    "count",
    "cume_dist",
    "current_database",
    "current_date",
    "current_schema",
    "current_schemas",
    "current_setting",
    "date",
    "date_bin",
    "date_part",
    "date_trunc",
    "decimal",
    "decode",
    "dense_rank",
    "digest",
    "div",
    "encode",
    "every",
    "exp",
    "extract",
    "first_value",
    "float",
    "float4",
    "float8",
    "floor",
    "format",
    "format_type",
    "gen_random_uuid",
    "generate_series",
    "generate_subscripts",
    "greatest",
    "has_column_privilege",
    "has_database_privilege",
    "has_schema_privilege",
    "has_table_privilege",
    "hashtext",
    "inet_client_addr",
    "inet_server_addr",
    "initcap",
    "int",
    "int2",
    "int4",
    "int8",
    "integer",
    "interval",
    "isfinite",
    "json_agg",
    "json_array_elements",
    "json_array_elements_text",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_each",
    "json_each_text",
    "json_extract_path",
    "json_extract_path_text",
    "json_object",
    "json_object_agg",
    "json_object_keys",
    "json_populate_record",
    "json_strip_nulls",
    "json_to_record",
    "json_to_recordset",
    "json_typeof",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_insert",
    "jsonb_object",
    "jsonb_object_agg",
    "jsonb_object_keys",
    "jsonb_path_exists",
    "jsonb_path_query",
    "jsonb_path_query_array",
    "jsonb_path_query_first",
    "jsonb_populate_record",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_to_record",
    "jsonb_to_recordset",
    "jsonb_typeof",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "num_nonnulls",
    "num_nulls",
    "numeric",
    "obj_description",
    "octet_length",
    "overlay",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_backend_pid",
    "pg_column_size",
    "pg_current_xact_id",
    "pg_database_size",
    "pg_get_constraintdef",
    "pg_get_expr",
    "pg_get_function_arguments",
    "pg_get_function_result",
    "pg_get_indexdef",
    "pg_get_keywords",
    "pg_get_serial_sequence",
    "pg_get_triggerdef",
    "pg_get_userbyid",
    "pg_get_viewdef",
    "pg_has_role",
    "pg_indexes_size",
    "pg_is_in_recovery",
    "pg_postmaster_start_time",
    "pg_relation_size",
    "pg_size_pretty",
    "pg_sleep",
    "pg_table_is_visible",
    "pg_table_size",
    "pg_total_relation_size",
    "pg_typeof",
    "phraseto_tsquery",
    "plainto_tsquery",
    "position",
    "power",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "random",
    "rank",
    "regexp_count",
    "regexp_like",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "setweight",
    "sign",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "sum",
    "time",
    "timeofday",
    "timestamp",
    "timestamptz",
    "timetz",
    "to_char",
    "to_date",
    "to_hex",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_regclass",
    "to_timestamp",
    "to_tsquery",
    "to_tsvector",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "ts_headline",
    "ts_rank",
    "ts_rank_cd",
    "txid_current",
    "unnest",
    "upper",
    "uuid_generate_v4",
    "varbit",
    "varchar",
    "version",
    "websearch_to_tsquery",
    "width_bucket",
];

/// Words that may stand before `(` without being a call.
const NOT_CALLS: &[&str] = &[
    "all",
    "and",
    "any",
    "array",
    "as",
    "between",
    "by",
    "case",
    "check",
    "conflict",
    "constraint",
    "cube",
    "default",
    "distinct",
    "do",
    "else",
    "except",
    "exists",
    "filter",
    "for",
    "foreign",
    "from",
    "group",
    "grouping",
    "groups",
    "having",
    "ilike",
    "in",
    "include",
    "index",
    "intersect",
    "into",
    "is",
    "join",
    "key",
    "lateral",
    "like",
    "limit",
    "materialized",
    "not",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "over",
    "partition",
    "primary",
    "range",
    "recursive",
    "references",
    "return",
    "returning",
    "returns",
    "rollup",
    "row",
    "rows",
    "select",
    "set",
    "sets",
    "similar",
    "some",
    "table",
    "tablesample",
    "then",
    "union",
    "unique",
    "using",
    "values",
    "when",
    "where",
    "window",
    "with",
    "within",
];

/// After these words a name followed by `(` is a table (or type) with a column list.
const BEFORE_TABLE: &[&str] = &[
    "copy",
    "exists",
    "into",
    "references",
    "table",
    "type",
    "view",
];

/// Statements that make no session state by themselves.
const PLAIN_STATEMENTS: &[&str] = &[
    "abort",
    "alter",
    "analyse",
    "analyze",
    "begin",
    "checkpoint",
    "cluster",
    "comment",
    "commit",
    "copy",
    "create",
    "delete",
    "end",
    "execute",
    "explain",
    "fetch",
    "grant",
    "import",
    "insert",
    "lock",
    "merge",
    "move",
    "notify",
    "reassign",
    "refresh",
    "reindex",
    "release",
    "revoke",
    "rollback",
    "savepoint",
    "security",
    "select",
    "show",
    "start",
    "table",
    "truncate",
    "update",
    "vacuum",
    "values",
    "with",
];

fn listed(list: &[&str], word: &str) -> bool {
    list.binary_search(&word).is_ok()
}

/// The first word of the statement being scanned, where it matters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Statement {
    Other,
    Create,
    Declare,
    Select,
    /// `SET`: the next word says whether it is local.
    Set,
    /// `PREPARE`: the next word says whether it is PREPARE TRANSACTION.
    Prepare,
}

/// A lower-cased word. One longer than 63 bytes (or not UTF-8) is never a keyword or a known
/// function and reads as "?".
struct Word {
    buf: [u8; 64],
    len: usize,
    odd: bool,
}

impl Word {
    fn new(raw: &[u8]) -> Word {
        let mut word = Word::empty();
        if raw.len() > 63 {
            word.odd = true;
            return word;
        }
        for (d, s) in word.buf.iter_mut().zip(raw) {
            *d = s.to_ascii_lowercase();
        }
        word.len = raw.len();
        word.odd = std::str::from_utf8(&word.buf[..word.len]).is_err();
        word
    }

    fn empty() -> Word {
        Word {
            buf: [0u8; 64],
            len: 0,
            odd: false,
        }
    }

    fn as_str(&self) -> &str {
        if self.odd {
            return "?";
        }
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

/// A Query message that makes PostgreSQL refuse, in its place, a statement that would pin
/// its client's server beyond max_pinned_servers: the error comes in order with the other
/// answers, and a transaction it is part of is aborted, as with any failed statement.
pub fn refusal_query(why: PinReasons) -> Vec<u8> {
    let sql = refusal_sql(why);
    let mut msg = Vec::with_capacity(sql.len() + 6);
    msg.push(b'Q');
    msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    msg
}

/// The unnamed Parse `body` (name, query, parameter types) with its query replaced by the
/// refusal: PostgreSQL raises it at Execute, in order. The parameter types are kept, so a
/// Bind with the client's parameters still matches. `None` for a named or malformed Parse.
pub fn refusal_parse(why: PinReasons, body: &[u8]) -> Option<Vec<u8>> {
    if body.first() != Some(&0) {
        return None;
    }
    let query_end = 1 + memchr::memchr(0, &body[1..])?;
    let types = &body[query_end + 1..];
    let sql = refusal_sql(why);
    let len = 4 + 1 + sql.len() + 1 + types.len();
    let mut msg = Vec::with_capacity(len + 1);
    msg.push(b'P');
    msg.extend_from_slice(&(len as u32).to_be_bytes());
    msg.push(0);
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    msg.extend_from_slice(types);
    Some(msg)
}

/// The refusal of a statement that would pin its client's server while the pool's limit on
/// pinned servers is reached: one wording, whether pgmoat answers it itself (at the start of a
/// transaction, knowing `pinned` = (servers pinned, limit)) or has PostgreSQL raise it inside
/// an open transaction.
pub fn pin_refusal(why: PinReasons, pinned: Option<(usize, usize)>) -> PgError {
    let message = match pinned {
        Some((count, limit)) => format!(
            "this statement would pin a server to this connection ({why}), and {count} of the \
             pool's servers are pinned already (max_pinned_servers = {limit})"
        ),
        None => format!(
            "this statement would pin a server to this connection ({why}), and the pool's \
             limit on pinned servers (max_pinned_servers) is reached"
        ),
    };
    PgError::error(SqlState::TOO_MANY_CONNECTIONS, message)
        .with_detail(
            "pgmoat refused it before it ran: temporary tables, session advisory locks, LISTEN, \
             SQL PREPARE and WITH HOLD cursors outlive their transaction, so the server that \
             holds them is kept for their client until they are gone.",
        )
        .with_hint(
            "Retry once other clients release their session state, raise max_pinned_servers \
             or the pool size, use transaction-scoped alternatives (ON COMMIT DROP, \
             pg_advisory_xact_lock), or set session_state = \"reset\".",
        )
}

/// A DO block that raises [`pin_refusal`] inside PostgreSQL.
fn refusal_sql(why: PinReasons) -> String {
    let refusal = pin_refusal(why, None);
    let literal = |text: &str| format!("'{}'", text.replace('\'', "''"));
    format!(
        "DO $pgmoat$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = {}, DETAIL = {}, \
         HINT = {}; END$pgmoat$",
        refusal.code.0,
        literal(&refusal.message),
        literal(refusal.detail.as_deref().unwrap_or_default()),
        literal(refusal.hint.as_deref().unwrap_or_default()),
    )
}

/// The effects of a Query (`Q`) or Parse (`P`) message body; nothing for other messages.
#[inline]
pub fn of_message(tag: u8, body: &[u8]) -> Effects {
    let sql = match tag {
        b'Q' => body,
        b'P' => match memchr::memchr(0, body) {
            Some(name_end) => &body[name_end + 1..],
            None => return Effects::UNKNOWN,
        },
        _ => return Effects::empty(),
    };
    let end = memchr::memchr(0, sql).unwrap_or(sql.len());
    classify(&sql[..end])
}

/// The effects of the SQL text of one Query or Parse message.
pub fn classify(sql: &[u8]) -> Effects {
    let mut effects = Effects::empty();
    let n = sql.len();
    let mut i = 0;
    let mut statement_start = true;
    let mut statement = Statement::Other;
    // The word before the current name, the one before that, and whether a '.' came last.
    let mut prev = Word::empty();
    let mut before_name = Word::empty();
    let mut after_dot = false;
    let mut qualifier;
    while i < n {
        let c = sql[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &sql[i..]).map_or(n, |p| i + p + 1);
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => i = skip_block_comment(sql, i),
            b'\'' => {
                let escapes = prev.as_str() == "e" && !after_dot && i > 0 && sql[i - 1] != b' ';
                i = skip_string(sql, i, escapes);
                after_dot = false;
            }
            b'"' => {
                // A quoted identifier: a name, never a keyword; called, it is a function
                // pgmoat cannot know.
                i = skip_quoted(sql, i, b'"');
                if !after_dot {
                    before_name = std::mem::replace(&mut prev, Word::new(b"\"\""));
                }
                let mut j = i;
                while j < n && sql[j].is_ascii_whitespace() {
                    j += 1;
                }
                if sql.get(j) == Some(&b'(') && !listed(BEFORE_TABLE, before_name.as_str()) {
                    effects |= Effects::UNKNOWN;
                }
                statement_start = false;
                after_dot = false;
            }
            b'$' => {
                i = skip_dollar(sql, i);
                after_dot = false;
            }
            b';' => {
                i += 1;
                statement_start = true;
                statement = Statement::Other;
                prev = Word::empty();
                after_dot = false;
            }
            b'.' => {
                i += 1;
                after_dot = true;
            }
            b'(' => i += 1,
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < n
                    && (sql[i].is_ascii_alphanumeric()
                        || sql[i] == b'_'
                        || sql[i] == b'$'
                        || sql[i] >= 0x80)
                {
                    i += 1;
                }
                let word = Word::new(&sql[start..i]);
                let w = word.as_str();
                let mut j = i;
                while j < n && sql[j].is_ascii_whitespace() {
                    j += 1;
                }
                let call = sql.get(j) == Some(&b'(');
                if statement_start {
                    statement_start = false;
                    statement = first_word(w, &mut effects);
                } else {
                    match statement {
                        Statement::Set => {
                            effects |= if matches!(w, "local" | "transaction" | "constraints") {
                                Effects::LOCAL_SET
                            } else {
                                Effects::SESSION_SET
                            };
                            statement = Statement::Other;
                        }
                        Statement::Prepare => {
                            effects |= if w == "transaction" {
                                Effects::COMMIT
                            } else {
                                Effects::SQL_PREPARE
                            };
                            statement = Statement::Other;
                        }
                        Statement::Create if matches!(w, "temp" | "temporary") => {
                            effects |= Effects::TEMP;
                        }
                        Statement::Create if w == "pg_temp" => effects |= Effects::TEMP,
                        Statement::Select
                            if matches!(w, "temp" | "temporary") && prev.as_str() == "into" =>
                        {
                            effects |= Effects::TEMP;
                        }
                        Statement::Declare if w == "hold" && prev.as_str() == "with" => {
                            effects |= Effects::HOLD_CURSOR;
                        }
                        _ => {}
                    }
                }
                if after_dot {
                    qualifier = std::mem::replace(&mut prev, word);
                } else {
                    before_name = std::mem::replace(&mut prev, word);
                    qualifier = Word::empty();
                }
                if call {
                    effects |=
                        call_effects(prev.as_str(), qualifier.as_str(), before_name.as_str());
                }
                after_dot = false;
            }
            _ => {
                i += 1;
                after_dot = false;
            }
        }
    }
    effects
}

/// The effects of a statement's first word, and what to watch for in the rest of it.
fn first_word(w: &str, effects: &mut Effects) -> Statement {
    match w {
        "set" => return Statement::Set,
        "prepare" => return Statement::Prepare,
        "create" => return Statement::Create,
        "declare" => return Statement::Declare,
        "select" | "with" => return Statement::Select,
        "reset" => *effects |= Effects::SESSION_SET,
        "discard" => *effects |= Effects::SESSION_SET | Effects::RELEASE,
        "deallocate" | "close" | "unlisten" | "drop" => *effects |= Effects::RELEASE,
        "listen" => *effects |= Effects::LISTEN,
        "commit" | "end" => *effects |= Effects::COMMIT,
        w if listed(PLAIN_STATEMENTS, w) => {}
        // DO, CALL, LOAD and anything this scan does not know.
        _ => *effects |= Effects::UNKNOWN,
    }
    Statement::Other
}

/// The effects of `name(` (qualified by `schema` when not empty; `before` is the word before
/// the whole name).
fn call_effects(name: &str, schema: &str, before: &str) -> Effects {
    if name == "?" || schema == "?" {
        return Effects::UNKNOWN;
    }
    if schema.is_empty() && listed(NOT_CALLS, name) {
        return Effects::empty();
    }
    if listed(BEFORE_TABLE, before) {
        return Effects::empty();
    }
    if !schema.is_empty() && schema != "pg_catalog" {
        // A name of the application's: a table's column list after INSERT INTO s.t is
        // caught above; anything else is a function pgmoat knows nothing about.
        return Effects::UNKNOWN;
    }
    match name {
        "set_config" => Effects::SESSION_SET,
        "pg_advisory_lock"
        | "pg_advisory_lock_shared"
        | "pg_try_advisory_lock"
        | "pg_try_advisory_lock_shared" => Effects::ADVISORY_LOCK,
        "pg_advisory_unlock" | "pg_advisory_unlock_shared" | "pg_advisory_unlock_all" => {
            Effects::RELEASE
        }
        "pg_advisory_xact_lock"
        | "pg_advisory_xact_lock_shared"
        | "pg_try_advisory_xact_lock"
        | "pg_try_advisory_xact_lock_shared" => Effects::empty(),
        name if listed(SAFE_FUNCTIONS, name) => Effects::empty(),
        _ => Effects::UNKNOWN,
    }
}

fn skip_block_comment(sql: &[u8], mut i: usize) -> usize {
    // Block comments nest in PostgreSQL.
    let mut depth = 0usize;
    while i < sql.len() {
        if sql[i] == b'/' && sql.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if sql[i] == b'*' && sql.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// Past a '...' literal starting at `i` ('' is a quote; with `escapes`, so is \').
fn skip_string(sql: &[u8], mut i: usize, escapes: bool) -> usize {
    i += 1;
    while i < sql.len() {
        match sql[i] {
            b'\\' if escapes => i += 2,
            b'\'' if sql.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

fn skip_quoted(sql: &[u8], mut i: usize, quote: u8) -> usize {
    i += 1;
    while i < sql.len() {
        if sql[i] == quote {
            if sql.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    i
}

/// Past `$n` (a parameter) or a `$tag$ ... $tag$` literal starting at `i`.
fn skip_dollar(sql: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < sql.len() && (sql[j].is_ascii_alphanumeric() || sql[j] == b'_') {
        if j == i + 1 && sql[j].is_ascii_digit() {
            // $1: a parameter.
            while j < sql.len() && sql[j].is_ascii_digit() {
                j += 1;
            }
            return j;
        }
        j += 1;
    }
    if sql.get(j) != Some(&b'$') {
        return j;
    }
    let tag = &sql[i..=j];
    let body = j + 1;
    match memchr::memmem::find(&sql[body..], tag) {
        Some(p) => body + p + tag.len(),
        None => sql.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fx(sql: &str) -> Effects {
        classify(sql.as_bytes())
    }

    #[test]
    fn the_lists_are_sorted_for_binary_search() {
        for list in [SAFE_FUNCTIONS, NOT_CALLS, BEFORE_TABLE, PLAIN_STATEMENTS] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{:?}", list);
        }
    }

    #[test]
    fn plain_traffic_has_no_effects() {
        for sql in [
            "SELECT 1",
            "select abalance from pgbench_accounts where aid = $1",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
            "BEGIN; SELECT count(*), lower(v) FROM items WHERE id IN (1, 2) GROUP BY 2; END",
            "SELECT coalesce(max(id), 0)::numeric(10,2) FROM public.items",
            "INSERT INTO app.items (v) VALUES ('SET ROLE x; CREATE TEMP TABLE t()') RETURNING id",
            "SELECT $$ select pg_advisory_lock(1) $$, 'it''s', E'\\' do $x$', \"weird(\" FROM t",
            "-- LISTEN x\nSELECT /* DO $$ /* nested */ $$ */ now()",
            "WITH x AS (SELECT 1) SELECT * FROM x JOIN y USING (id)",
            "SELECT pg_advisory_xact_lock(1)",
            "BEGIN; SET LOCAL statement_timeout = 0; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; COMMIT",
            "SELECT temp FROM weather",
        ] {
            let effects = fx(sql) - Effects::LOCAL_SET - Effects::COMMIT;
            assert_eq!(effects, Effects::empty(), "{sql}");
            assert!(!fx(sql).needs_probe(false), "{sql}");
        }
    }

    #[test]
    fn commits_are_seen_and_need_no_probe() {
        for sql in [
            "COMMIT",
            "end work",
            "INSERT INTO t VALUES (1); COMMIT",
            "COMMIT PREPARED 'x'",
            "PREPARE TRANSACTION 'x'",
        ] {
            assert!(fx(sql).contains(Effects::COMMIT), "{sql}");
            assert!(!fx(sql).needs_probe(false), "{sql}");
            assert!(!fx(sql).contains(Effects::SQL_PREPARE), "{sql}");
        }
        for sql in [
            "ROLLBACK",
            "SELECT CASE WHEN x THEN 1 END FROM t",
            "SELECT 'COMMIT'",
        ] {
            assert!(!fx(sql).contains(Effects::COMMIT), "{sql}");
        }
    }

    #[test]
    fn session_state_is_seen() {
        let cases = [
            ("CREATE TEMP TABLE t (x int)", Effects::TEMP),
            ("create global temporary table t as select 1", Effects::TEMP),
            ("CREATE TEMPORARY VIEW v AS SELECT 1", Effects::TEMP),
            ("SELECT * INTO TEMP t FROM items", Effects::TEMP),
            ("CREATE TABLE pg_temp.t (x int)", Effects::TEMP),
            ("SELECT pg_advisory_lock(42)", Effects::ADVISORY_LOCK),
            (
                "select pg_catalog.pg_try_advisory_lock_shared($1)",
                Effects::ADVISORY_LOCK,
            ),
            ("LISTEN jobs", Effects::LISTEN),
            ("PREPARE p AS SELECT 1", Effects::SQL_PREPARE),
            (
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                Effects::HOLD_CURSOR,
            ),
            ("SET search_path = app", Effects::SESSION_SET),
            ("SET SESSION AUTHORIZATION bob", Effects::SESSION_SET),
            ("set role tenant_a", Effects::SESSION_SET),
            ("RESET ALL", Effects::SESSION_SET),
            ("SELECT set_config('x.y', '1', false)", Effects::SESSION_SET),
            ("DISCARD ALL", Effects::SESSION_SET | Effects::RELEASE),
            ("DEALLOCATE ALL", Effects::RELEASE),
            ("UNLISTEN *", Effects::RELEASE),
            ("DROP TABLE t", Effects::RELEASE),
            ("SELECT pg_advisory_unlock_all()", Effects::RELEASE),
            ("DO $$ BEGIN PERFORM 1; END $$", Effects::UNKNOWN),
            ("CALL proc()", Effects::UNKNOWN),
            ("SELECT my_function(1)", Effects::UNKNOWN),
            ("SELECT app.lower(v) FROM t", Effects::UNKNOWN),
            (
                "BEGIN; SELECT 1; LISTEN x; COMMIT",
                Effects::LISTEN.union(Effects::COMMIT),
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(fx(sql), expected, "{sql}");
        }
        assert!(!fx("PREPARE TRANSACTION 'x'").contains(Effects::SQL_PREPARE));
        assert!(!fx("DECLARE c CURSOR FOR SELECT 1").contains(Effects::HOLD_CURSOR));
        assert!(fx("DROP TABLE t").needs_probe(true));
        assert!(!fx("DROP TABLE t").needs_probe(false));
    }

    #[test]
    fn command_tags_are_a_safety_net() {
        let none = Effects::empty();
        assert_eq!(
            Effects::from_command_tag(b"SET\0", none),
            Effects::SESSION_SET
        );
        assert_eq!(
            Effects::from_command_tag(b"SET\0", Effects::LOCAL_SET),
            none
        );
        assert_eq!(Effects::from_command_tag(b"SELECT 1\0", none), none);
        assert_eq!(
            Effects::from_command_tag(b"LISTEN\0", none),
            Effects::LISTEN
        );
        assert_eq!(
            Effects::from_command_tag(b"DISCARD ALL\0", none),
            Effects::SESSION_SET | Effects::RELEASE
        );
    }

    #[test]
    fn garbage_never_panics() {
        for sql in [
            "'", "$", "$a", "$a$", "/*", "/* /* */", "\"", "e'\\", "x(", "(((", ";;;", "\u{e9}(",
        ] {
            let _ = fx(sql);
        }
        let long = "a".repeat(200) + "(";
        assert_eq!(fx(&long), Effects::UNKNOWN);
    }
}
