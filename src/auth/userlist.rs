//! The auth_file in PgBouncer's userlist.txt format: `"user" "secret"` per line, `""` is a quote
//! inside a field, blank lines and lines starting with `;` or `#` are skipped, and (as in
//! PgBouncer) anything after the second field is ignored.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::AuthError;
use super::md5::parse_md5_secret;
use super::scram::{SCRAM_SECRET_PREFIX, ScramSecret};

/// What the auth_file holds for one user.
///
/// The Debug impl prints the kind only, so a `Secret` can sit in a struct that gets logged.
#[derive(Clone)]
pub enum Secret {
    /// A plain-text password. Empty means "no password": it never authenticates, which lets an
    /// auth_file list users for `trust` without giving them a password.
    Plain(String),
    /// md5(password + user), as PostgreSQL stores it after "md5".
    Md5([u8; 16]),
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramSecret),
}

impl Secret {
    /// Classifies a secret as PostgreSQL does (`md5` + 32 hex digits, `SCRAM-SHA-256$...`,
    /// otherwise plain text), except that a malformed SCRAM verifier is an error rather than a
    /// plain password: nobody means the verifier text itself to be a password.
    pub fn parse(text: &str) -> Result<Secret, AuthError> {
        if text.starts_with(SCRAM_SECRET_PREFIX) {
            return Ok(Secret::Scram(ScramSecret::parse(text)?));
        }
        if let Some(hash) = parse_md5_secret(text) {
            return Ok(Secret::Md5(hash));
        }
        Ok(Secret::Plain(text.to_owned()))
    }

    /// The SCRAM verifier to authenticate this user with: parsed verifiers as they are, plain
    /// passwords turned into one (fresh salt each call). `None` for md5 hashes and empty
    /// passwords, which cannot do SCRAM: run the exchange with `ScramSecret::mock_for` then, so
    /// the client fails like with a wrong password, as PostgreSQL does.
    pub fn to_scram(&self) -> Option<ScramSecret> {
        match self {
            Secret::Plain(password) if password.is_empty() => None,
            Secret::Plain(password) => Some(ScramSecret::from_password(password)),
            Secret::Md5(_) => None,
            Secret::Scram(secret) => Some(secret.clone()),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Plain(<redacted>)"),
            Secret::Md5(_) => f.write_str("Md5(<redacted>)"),
            Secret::Scram(secret) => f.debug_tuple("Scram").field(secret).finish(),
        }
    }
}

/// The users of an auth_file and their secrets.
#[derive(Debug, Clone, Default)]
pub struct UserList {
    users: HashMap<String, Secret>,
}

impl UserList {
    /// Reads and parses an auth_file; errors name the file and line, never a secret.
    pub fn load(path: impl AsRef<Path>) -> Result<UserList, AuthError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        UserList::parse(&text, &path.display().to_string())
    }

    /// Parses auth_file text; `origin` names it in errors (usually the file path).
    ///
    /// A user listed twice is an error: which line wins would otherwise be a silent surprise.
    pub fn parse(text: &str, origin: &str) -> Result<UserList, AuthError> {
        let mut users = HashMap::new();
        let mut first_line = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let fail = |reason: String| AuthError::UserList {
                origin: origin.to_owned(),
                line: number,
                reason,
            };
            let Some((user, secret)) = parse_line(line).map_err(|r| fail(r.to_owned()))? else {
                continue;
            };
            if user.is_empty() {
                return Err(fail("empty user name".into()));
            }
            // Keep the cause but not the text: a ScramError never holds the secret anyway.
            let secret = Secret::parse(&secret).map_err(|e| fail(e.to_string()))?;
            if let Some(first) = first_line.get(&user) {
                return Err(fail(format!(
                    "user {user:?} is listed twice (first on line {first})"
                )));
            }
            first_line.insert(user.clone(), number);
            users.insert(user, secret);
        }
        Ok(UserList { users })
    }

    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// `Ok(None)` for blank and comment lines, else the two fields. Error reasons are fixed
/// strings so they cannot quote a secret.
fn parse_line(line: &str) -> Result<Option<(String, String)>, &'static str> {
    let rest = line.trim_start();
    if rest.is_empty() || rest.starts_with(';') || rest.starts_with('#') {
        return Ok(None);
    }
    let (user, rest) = quoted(rest).ok_or("expected a double-quoted user name")?;
    let rest = rest.trim_start();
    let (secret, _ignored) =
        quoted(rest).ok_or("expected a double-quoted secret after the user name")?;
    Ok(Some((user, secret)))
}

/// Reads one `"..."` field at the start of `s` (`""` inside is a quote) and returns it with
/// the text after the closing quote; `None` if `s` does not start with a complete field.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut rest = s.strip_prefix('"')?;
    let mut field = String::new();
    loop {
        let end = rest.find('"')?;
        field.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        match rest.strip_prefix('"') {
            Some(after_escape) => {
                field.push('"');
                rest = after_escape;
            }
            None => return Some((field, rest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$\
        VbgGQd5UpbGmddbOIyVEOOQkBphMFK3YhYJ3b1+dHLM=:\
        x4iqInbBo3MSOHrjp9tw+2yxnm4gVt4KxDS6T1YVDmA=";

    #[test]
    fn parses_all_three_secret_forms() {
        let md5 = postgres_protocol::password::md5(b"pw", "carol");
        let text =
            format!("\"alice\" \"plain pass\"\n\"bob\" \"{VERIFIER}\"\n\"carol\" \"{md5}\"\n");
        let list = UserList::parse(&text, "userlist.txt").unwrap();
        assert_eq!(list.len(), 3);
        assert!(matches!(list.get("alice"), Some(Secret::Plain(p)) if p == "plain pass"));
        match list.get("bob") {
            Some(Secret::Scram(s)) => {
                assert_eq!(s.iterations, 4096);
                assert_eq!(s.salt, b"saltsaltsaltsalt");
            }
            other => panic!("bob: {other:?}"),
        }
        assert!(matches!(list.get("carol"), Some(Secret::Md5(_))));
        assert!(list.get("dave").is_none());
    }

    #[test]
    fn doubled_quotes_are_literal_quotes() {
        let list = UserList::parse(r#""a""b" "p""w""""#, "t").unwrap();
        assert!(matches!(list.get("a\"b"), Some(Secret::Plain(p)) if p == "p\"w\""));
    }

    #[test]
    fn skips_comments_blank_lines_and_trailing_fields() {
        let text = "; comment\n# another\n\n   \n  ;indented comment\n\
            \"u\"   \"p\"  \"extra field\" anything\r\n\t\"v\"\t\"q\"\n";
        let list = UserList::parse(text, "t").unwrap();
        assert_eq!(list.len(), 2);
        assert!(matches!(list.get("u"), Some(Secret::Plain(p)) if p == "p"));
        assert!(matches!(list.get("v"), Some(Secret::Plain(p)) if p == "q"));
    }

    #[test]
    fn empty_file_is_an_empty_list() {
        let list = UserList::parse("", "t").unwrap();
        assert!(list.is_empty());
    }

    fn parse_err(text: &str) -> String {
        UserList::parse(text, "/etc/pgmoat/userlist.txt")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_line_names_file_and_line_but_not_the_secret() {
        let err = parse_err("\"ok\" \"fine\"\n; c\n\"bob\" \"hunter2-secret\n");
        assert!(err.starts_with("/etc/pgmoat/userlist.txt:3:"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");

        let err = parse_err("\"bob\" hunter2-secret\n");
        assert!(err.starts_with("/etc/pgmoat/userlist.txt:1:"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");

        let err = parse_err("bob \"hunter2-secret\"");
        assert!(err.contains(":1:") && !err.contains("hunter2"), "{err}");
    }

    #[test]
    fn broken_scram_verifier_is_an_error_without_the_verifier() {
        let broken = VERIFIER.replace("$4096:", "$many:");
        let err = parse_err(&format!("\n\"bob\" \"{broken}\""));
        assert!(err.contains(":2:"), "{err}");
        assert!(
            !err.contains("c2FsdHNh") && !err.contains("VbgGQd5U"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_and_empty_users_are_errors() {
        let err = parse_err("\"a\" \"x\"\n\"a\" \"y\"\n");
        assert!(err.contains(":2:") && err.contains("line 1"), "{err}");
        assert!(!err.contains("\"x\"") && !err.contains("\"y\""), "{err}");
        let err = parse_err("\"\" \"x\"\n");
        assert!(err.contains(":1: empty user name"), "{err}");
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("userlist.txt");
        std::fs::write(&path, "\"alice\" \"pw\"\n").unwrap();
        assert_eq!(UserList::load(&path).unwrap().len(), 1);

        std::fs::write(&path, "\"alice\" \"pw\"\n\"bob\"\n").unwrap();
        let err = UserList::load(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:2:", path.display())), "{err}");

        let missing = dir.path().join("nope.txt");
        let err = UserList::load(&missing).unwrap_err();
        assert!(matches!(err, AuthError::ReadFile { .. }));
        assert!(err.to_string().contains("nope.txt"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let text = format!(
            "\"alice\" \"hunter2\"\n\"bob\" \"{VERIFIER}\"\n\"c\" \"md5{}\"",
            "ab".repeat(16)
        );
        let list = UserList::parse(&text, "t").unwrap();
        let shown = format!("{list:?} {:?}", list.get("alice"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            !shown.contains("VbgGQd5U") && !shown.contains("x4iqInbB"),
            "{shown}"
        );
        assert!(
            !shown.contains("abab") && !shown.contains("171, 171"),
            "{shown}"
        );
        assert!(shown.contains("Plain(<redacted>)"), "{shown}");
    }

    #[test]
    fn to_scram_covers_each_kind() {
        assert!(Secret::Plain(String::new()).to_scram().is_none());
        assert!(Secret::Md5([0; 16]).to_scram().is_none());
        let from_plain = Secret::Plain("pw".into()).to_scram().unwrap();
        assert_eq!(from_plain.iterations, 4096);
        let parsed = Secret::parse(VERIFIER).unwrap().to_scram().unwrap();
        assert_eq!(parsed.salt, b"saltsaltsaltsalt");
    }
}
