//! auth_ident_file: user name maps in pg_ident.conf format, `MAPNAME SYSTEM-USERNAME
//! PG-USERNAME` per line, with PostgreSQL 15's meaning. The system user name is a client
//! certificate's identity (see auth_cert_identity).
//!
//! A SYSTEM-USERNAME that starts with `/` is a regular expression (the rest of the token); when
//! it matches and PG-USERNAME contains `\1`, the first `\1` is replaced by the first capture.
//! PG 15 has no `all`, `+group` or regular expression in the PG-USERNAME column and no include
//! directives, so that column is always a literal name. Matching is case-sensitive.
//!
//! Regular expressions are Rust's `regex` dialect, not PostgreSQL's ARE: no backreferences
//! inside the pattern, no lookahead or lookbehind, no `\m`, `\M` or `\y` word boundaries (use
//! `\b`), no `***:` directors or embedded options other than `(?flags)`. Anchors, classes,
//! groups and repetition behave the same. Matching is linear-time, and each pattern's size is
//! bounded, so a map cannot make logins slow or eat memory.

use std::path::Path;

use regex::{Regex, RegexBuilder};

use super::conf_tokens::{parse_lines, read_conf, tokenize};

/// Compiled size bound of one pattern: generous for any name pattern, small next to memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A pg_ident.conf error: the file, or the line and why.
pub use super::conf_tokens::ConfFileError as IdentError;

#[derive(Debug)]
enum SystemUser {
    Literal(String),
    /// The pattern, and whether PG-USERNAME takes its first capture.
    Pattern(Regex),
}

#[derive(Debug)]
struct IdentEntry {
    map: String,
    system: SystemUser,
    pg_user: String,
}

/// Every map of an auth_ident_file, in file order.
#[derive(Debug, Default)]
pub struct IdentMaps {
    entries: Vec<IdentEntry>,
}

impl IdentMaps {
    pub fn load(path: &Path) -> Result<IdentMaps, IdentError> {
        IdentMaps::parse(&read_conf(path)?, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<IdentMaps, IdentError> {
        let entries = parse_lines(text, origin, |line, _| parse_entry(line))?;
        Ok(IdentMaps { entries })
    }

    pub fn has_map(&self, map: &str) -> bool {
        self.entries.iter().any(|e| e.map == map)
    }

    pub fn map_names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.map.as_str())
    }

    /// Does map `map` let the system user `system_user` log in as `pg_user`?
    pub fn allows(&self, map: &str, system_user: &str, pg_user: &str) -> bool {
        self.entries
            .iter()
            .filter(|e| e.map == map)
            .any(|e| match &e.system {
                SystemUser::Literal(name) => name == system_user && e.pg_user == pg_user,
                SystemUser::Pattern(regex) => {
                    let Some(captures) = regex.captures(system_user) else {
                        return false;
                    };
                    match (e.pg_user.contains("\\1"), captures.get(1)) {
                        (true, Some(first)) => {
                            e.pg_user.replacen("\\1", first.as_str(), 1) == pg_user
                        }
                        // A group that took no part in the match stands for nothing.
                        (true, None) => e.pg_user.replacen("\\1", "", 1) == pg_user,
                        (false, _) => e.pg_user == pg_user,
                    }
                }
            })
    }
}

/// One `MAPNAME SYSTEM-USERNAME PG-USERNAME` line; `None` for a blank or comment line.
fn parse_entry(line: &str) -> Result<Option<IdentEntry>, String> {
    let tokens = tokenize(line)?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let [map, system, pg_user] = <[_; 3]>::try_from(tokens).map_err(|tokens: Vec<_>| {
        format!(
            "expected MAPNAME SYSTEM-USERNAME PG-USERNAME, found {} field(s)",
            tokens.len()
        )
    })?;
    let system = match system.text.strip_prefix('/') {
        Some(pattern) => {
            let regex = RegexBuilder::new(pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))?;
            // PostgreSQL reports this at login; at load it cannot surprise anyone.
            if pg_user.text.contains("\\1") && regex.captures_len() < 2 {
                return Err(format!(
                    "regular expression {pattern:?} has no capture group for the \\1 in {:?}",
                    pg_user.text
                ));
            }
            SystemUser::Pattern(regex)
        }
        None => SystemUser::Literal(system.text),
    };
    Ok(Some(IdentEntry {
        map: map.text,
        system,
        pg_user: pg_user.text,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps(text: &str) -> IdentMaps {
        IdentMaps::parse(text, "pg_ident.conf").unwrap()
    }

    fn error(text: &str) -> String {
        IdentMaps::parse(text, "pg_ident.conf")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn literal_entries_allow_exactly_what_they_list() {
        let m = maps(
            "# MAPNAME SYSTEM-USERNAME PG-USERNAME\n\
             svc   svc-billing   billing\n\
             svc   svc-billing   billing_ro   # several roles for one certificate\n\
             other svc-billing   admin\n",
        );
        assert!(m.allows("svc", "svc-billing", "billing"));
        assert!(m.allows("svc", "svc-billing", "billing_ro"));
        assert!(
            !m.allows("svc", "svc-billing", "admin"),
            "admin is in another map"
        );
        assert!(!m.allows("svc", "svc-shop", "billing"));
        assert!(!m.allows("nomap", "svc-billing", "billing"));
        assert!(m.has_map("other") && !m.has_map("nomap"));
        // Case-sensitive, as PostgreSQL 15 is by default.
        assert!(!m.allows("svc", "SVC-billing", "billing"));
        assert!(!m.allows("svc", "svc-billing", "Billing"));
    }

    #[test]
    fn a_regular_expression_capture_becomes_the_role() {
        let m = maps(
            "certs /^svc-(.*)$ \\1\n\
             spiffe \"/^spiffe://prod/ns/([a-z0-9-]+)/sa/api$\" \\1\n\
             fixed /^ops-[0-9]+$ operator\n\
             prefixed /^(.*)@example\\.com$ app_\\1\n",
        );
        assert!(m.allows("certs", "svc-billing", "billing"));
        assert!(!m.allows("certs", "svc-billing", "admin"));
        assert!(!m.allows("certs", "xsvc-billing", "billing"), "anchored");
        assert!(m.allows("spiffe", "spiffe://prod/ns/billing/sa/api", "billing"));
        assert!(!m.allows("spiffe", "spiffe://prod/ns/billing/sa/web", "billing"));
        assert!(!m.allows("spiffe", "spiffe://dev/ns/billing/sa/api", "billing"));
        assert!(m.allows("fixed", "ops-42", "operator"));
        assert!(!m.allows("fixed", "ops-42", "ops-42"));
        assert!(m.allows("prefixed", "ann@example.com", "app_ann"));
    }

    #[test]
    fn only_the_first_backreference_is_replaced() {
        // PostgreSQL replaces the first \1 only; a second one stays as written.
        let m = maps("m /^(a+)$ \\1_\\1\n");
        assert!(m.allows("m", "aa", "aa_\\1"));
        assert!(!m.allows("m", "aa", "aa_aa"));
    }

    #[test]
    fn bad_lines_name_file_line_and_reason() {
        let e = error("ok a b\nbroken a\n");
        assert!(e.starts_with("pg_ident.conf:2: expected MAPNAME"), "{e}");
        assert!(error("m a b c\n").contains("found 4 field(s)"));
        let e = error("m /^(unclosed$ x\n");
        assert!(
            e.starts_with("pg_ident.conf:1: invalid regular expression"),
            "{e}"
        );
        let e = error("m /^svc-.*$ \\1\n");
        assert!(e.contains("has no capture group"), "{e}");
        assert!(error("m \"open a\n").contains("unterminated"));
        // PostgreSQL's dialect has backreferences in patterns; Rust's regex does not.
        assert!(error("m /^(a)\\1$ x\n").contains("invalid regular expression"));
    }

    #[test]
    fn a_huge_pattern_is_refused() {
        let e = error("m /^(a{1000}){1000}$ x\n");
        assert!(e.contains("invalid regular expression"), "{e}");
    }
}
