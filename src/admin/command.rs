//! The console's grammar, as PgBouncer's: one command per query, a keyword and at most one
//! argument (a bare word or a "quoted" name), any case, an optional trailing `;`.

/// What SHOW can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Help,
    Pools,
    Clients,
    Servers,
    Stats,
    StatsTotals,
    StatsAverages,
    Totals,
    Databases,
    Config,
    Lists,
    Version,
    State,
    Certs,
    Hosts,
}

impl Show {
    fn parse(word: &str) -> Option<Show> {
        Some(match word.to_ascii_lowercase().as_str() {
            "help" => Show::Help,
            "pools" => Show::Pools,
            "clients" => Show::Clients,
            "servers" => Show::Servers,
            "stats" => Show::Stats,
            "stats_totals" => Show::StatsTotals,
            "stats_averages" => Show::StatsAverages,
            "totals" => Show::Totals,
            "databases" => Show::Databases,
            "config" => Show::Config,
            "lists" => Show::Lists,
            "version" => Show::Version,
            "state" => Show::State,
            "certs" => Show::Certs,
            "hosts" => Show::Hosts,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty query string (`;` alone included).
    Empty,
    Show(Show),
    Reload,
    Pause(Option<String>),
    Resume(Option<String>),
    Reconnect(Option<String>),
    Shutdown,
    /// `SET` of a client parameter some drivers send blindly; answered with a notice.
    SetIgnored,
}

impl Command {
    /// Commands that change something: admin_users only.
    pub fn needs_admin(&self) -> bool {
        matches!(
            self,
            Command::Reload
                | Command::Pause(_)
                | Command::Resume(_)
                | Command::Reconnect(_)
                | Command::Shutdown
        )
    }
}

/// Client parameters PgBouncer pretends to accept on its console.
const IGNORED_SETTINGS: &[&str] = &[
    "client_encoding",
    "default_transaction_isolation",
    "standard_conforming_strings",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "application_name",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command: {0}")]
    Unknown(String),
    #[error("SET is not supported on the pgmoat console; change the config file and RELOAD")]
    Set,
}

/// Splits into words; a double-quoted word may hold spaces and `""` for a quote.
fn words(sql: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        word.push('"');
                    }
                    '"' => break,
                    other => word.push(other),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '"' {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        out.push(word);
    }
    Some(out)
}

pub fn parse(sql: &str) -> Result<Command, ParseError> {
    let unknown = || ParseError::Unknown(sql.trim().to_owned());
    let body = sql.trim().trim_end_matches(';').trim_end();
    if body.contains(';') {
        return Err(unknown());
    }
    let words = words(body).ok_or_else(unknown)?;
    let Some((keyword, args)) = words.split_first() else {
        return Ok(Command::Empty);
    };
    let keyword = keyword.to_ascii_lowercase();
    if keyword == "set" {
        let name = args.first().map(|a| a.to_ascii_lowercase());
        let name = name.as_deref().map(|n| n.split('=').next().unwrap_or(n));
        return match name {
            Some(n) if IGNORED_SETTINGS.contains(&n) => Ok(Command::SetIgnored),
            _ => Err(ParseError::Set),
        };
    }
    let arg = match args {
        [] => None,
        [one] => Some(one.clone()),
        _ => return Err(unknown()),
    };
    Ok(match (keyword.as_str(), arg) {
        ("show" | "select", Some(what)) => Command::Show(Show::parse(&what).ok_or_else(unknown)?),
        ("reload", None) => Command::Reload,
        ("pause", db) => Command::Pause(db),
        ("resume", db) => Command::Resume(db),
        ("reconnect", db) => Command::Reconnect(db),
        ("shutdown", None) => Command::Shutdown,
        // pgmoat's shutdown always waits for transactions in flight, as both of these ask.
        ("shutdown", Some(mode))
            if mode.eq_ignore_ascii_case("wait_for_clients")
                || mode.eq_ignore_ascii_case("wait_for_servers") =>
        {
            Command::Shutdown
        }
        _ => return Err(unknown()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_case_insensitive_with_optional_semicolon() {
        assert_eq!(parse("SHOW POOLS;"), Ok(Command::Show(Show::Pools)));
        assert_eq!(parse("  show\tpools  ; "), Ok(Command::Show(Show::Pools)));
        assert_eq!(
            parse("Show Stats_Totals"),
            Ok(Command::Show(Show::StatsTotals))
        );
        assert_eq!(parse("show certs"), Ok(Command::Show(Show::Certs)));
        assert_eq!(parse("reload;"), Ok(Command::Reload));
        assert_eq!(parse("SHUTDOWN"), Ok(Command::Shutdown));
        assert_eq!(parse("shutdown wait_for_clients"), Ok(Command::Shutdown));
        assert_eq!(parse(""), Ok(Command::Empty));
        assert_eq!(parse(" ; "), Ok(Command::Empty));
    }

    #[test]
    fn database_arguments_keep_their_spelling() {
        assert_eq!(parse("PAUSE"), Ok(Command::Pause(None)));
        assert_eq!(parse("pause App;"), Ok(Command::Pause(Some("App".into()))));
        assert_eq!(
            parse(r#"RESUME "my ""db""""#),
            Ok(Command::Resume(Some(r#"my "db""#.into())))
        );
        assert_eq!(
            parse("reconnect app"),
            Ok(Command::Reconnect(Some("app".into())))
        );
    }

    #[test]
    fn anything_else_is_an_unknown_command() {
        for bad in [
            "SHOW",
            "SHOW NOTHING",
            "SELECT 1",
            "RELOAD now",
            "SHOW POOLS; SHOW STATS",
            "PAUSE a b",
            "DROP TABLE x",
            "shutdown later",
            r#"pause "unterminated"#,
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::Unknown(_))),
                "{bad:?} parsed"
            );
        }
        assert_eq!(parse("SET extra_float_digits = 3"), Ok(Command::SetIgnored));
        assert_eq!(parse("set datestyle=ISO"), Ok(Command::SetIgnored));
        assert_eq!(parse("SET default_pool_size = 5"), Err(ParseError::Set));
    }

    #[test]
    fn only_changes_need_admin() {
        assert!(!parse("SHOW CONFIG").unwrap().needs_admin());
        for cmd in ["RELOAD", "PAUSE", "RESUME app", "RECONNECT", "SHUTDOWN"] {
            assert!(parse(cmd).unwrap().needs_admin(), "{cmd}");
        }
    }
}
