//! pgmoat TOML for a [`Pki`] and a [`TestDb`]: a sane TLS-everywhere default that tests then
//! bend one setting at a time. Listen address and port are left to [`crate::support::Pgmoat`].

use std::fs;
use std::path::{Path, PathBuf};

use super::{ALICE_PASSWORD, APP_DB, BOB_PASSWORD, Pki, TestDb};

#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    /// Top-level keys with TOML-encoded values, in order; `set` replaces in place.
    settings: Vec<(String, String)>,
    extra_lines: Vec<String>,
    database_lines: Vec<String>,
    userlist: Option<Vec<(String, String)>>,
    /// Where userlist files go (the Pki's dir, which outlives pgmoat in a test).
    files_dir: PathBuf,
    pg_port: u16,
    pg_host: String,
    pg_dbname: String,
}

/// A TOML string literal.
pub fn toml_str(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

fn toml_path(path: &Path) -> String {
    toml_str(&path.display().to_string())
}

impl ConfigBuilder {
    /// client TLS `require` with pgmoat's cert (CA for client certs: the Pki CA), server TLS
    /// `verify-full` with the Pki CA and pgmoat's client cert, `scram-sha-256` against a
    /// userlist holding alice and bob, and `[databases.app]` pointing at the TestDb.
    pub fn new(pki: &Pki, db: &TestDb) -> ConfigBuilder {
        ConfigBuilder::for_port(pki, db.port())
    }

    /// [`new`](Self::new) without a running PostgreSQL: `[databases.app]` points at
    /// localhost:`pg_port` (for tests that never reach a server, e.g. config checks or
    /// refusals before login).
    pub fn for_port(pki: &Pki, pg_port: u16) -> ConfigBuilder {
        let settings = [
            ("auth_type", toml_str("scram-sha-256")),
            ("client_tls_sslmode", toml_str("require")),
            ("client_tls_cert_file", toml_path(&pki.pgmoat.crt)),
            ("client_tls_key_file", toml_path(&pki.pgmoat.key)),
            ("client_tls_ca_file", toml_path(&pki.ca)),
            ("server_tls_sslmode", toml_str("verify-full")),
            ("server_tls_ca_file", toml_path(&pki.ca)),
            ("server_tls_cert_file", toml_path(&pki.pgmoat_client.crt)),
            ("server_tls_key_file", toml_path(&pki.pgmoat_client.key)),
        ];
        ConfigBuilder {
            settings: settings
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            extra_lines: Vec::new(),
            database_lines: Vec::new(),
            userlist: Some(vec![
                ("alice".to_owned(), ALICE_PASSWORD.to_owned()),
                ("bob".to_owned(), BOB_PASSWORD.to_owned()),
            ]),
            files_dir: pki.dir.path().to_owned(),
            pg_port,
            pg_host: "localhost".into(),
            pg_dbname: APP_DB.into(),
        }
    }

    /// Sets a top-level key to a TOML value written as is (`"5"`, `"true"`, `"[\"a\"]"`).
    /// Setting `auth_file` replaces the generated userlist.
    pub fn set(mut self, key: &str, toml_value: &str) -> Self {
        if key == "auth_file" {
            self.userlist = None;
        }
        match self.settings.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = toml_value.to_owned(),
            None => self.settings.push((key.to_owned(), toml_value.to_owned())),
        }
        self
    }

    /// Sets a top-level key to a string.
    pub fn set_str(self, key: &str, value: &str) -> Self {
        self.set(key, &toml_str(value))
    }

    pub fn set_path(self, key: &str, path: &Path) -> Self {
        self.set(key, &toml_path(path))
    }

    /// Leaves a key out entirely (to test pgmoat's default or a missing-key error).
    pub fn unset(mut self, key: &str) -> Self {
        self.settings.retain(|(k, _)| k != key);
        self
    }

    pub fn client_sslmode(self, mode: &str) -> Self {
        self.set_str("client_tls_sslmode", mode)
    }

    pub fn server_sslmode(self, mode: &str) -> Self {
        self.set_str("server_tls_sslmode", mode)
    }

    pub fn auth_type(self, auth: &str) -> Self {
        self.set_str("auth_type", auth)
    }

    /// The userlist (auth_file) entries, replacing alice and bob.
    pub fn userlist(mut self, entries: &[(&str, &str)]) -> Self {
        self.userlist = Some(
            entries
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        );
        self
    }

    /// No auth_file at all.
    pub fn no_userlist(mut self) -> Self {
        self.userlist = None;
        self
    }

    /// A raw top-level line, written after the settings.
    pub fn line(mut self, raw: &str) -> Self {
        self.extra_lines.push(raw.to_owned());
        self
    }

    /// A raw line inside `[databases.app]` (e.g. `pool_size = 2`).
    pub fn database_line(mut self, raw: &str) -> Self {
        self.database_lines.push(raw.to_owned());
        self
    }

    /// Points `[databases.app]` at another port on 127.0.0.1 (e.g. a [`crate::support::TcpTap`]
    /// in front of the TestDb).
    pub fn server_port(mut self, port: u16) -> Self {
        self.pg_port = port;
        self
    }

    /// The `host` of `[databases.app]` (default `localhost`).
    pub fn server_host(mut self, host: &str) -> Self {
        self.pg_host = host.to_owned();
        self
    }

    /// The `dbname` of `[databases.app]` (default `app`).
    pub fn server_dbname(mut self, dbname: &str) -> Self {
        self.pg_dbname = dbname.to_owned();
        self
    }

    /// The TOML text (writes the userlist file, if any, next to the Pki).
    pub fn build(&self) -> String {
        let mut text = String::new();
        for (key, value) in &self.settings {
            text.push_str(&format!("{key} = {value}\n"));
        }
        if let Some(entries) = &self.userlist {
            let path = self.write_userlist(entries);
            text.push_str(&format!("auth_file = {}\n", toml_path(&path)));
        }
        for line in &self.extra_lines {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&format!(
            "\n[databases.{APP_DB}]\nhost = {}\nport = {}\ndbname = {}\n",
            toml_str(&self.pg_host),
            self.pg_port,
            toml_str(&self.pg_dbname)
        ));
        for line in &self.database_lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    fn write_userlist(&self, entries: &[(String, String)]) -> PathBuf {
        let text: String = entries
            .iter()
            .map(|(user, password)| {
                format!("{} {}\n", userlist_quote(user), userlist_quote(password))
            })
            .collect();
        // A fresh file per build: several pgmoats in one test may want different lists.
        let file = tempfile::Builder::new()
            .prefix("userlist-")
            .suffix(".txt")
            .tempfile_in(&self.files_dir)
            .unwrap();
        let (_, path) = file.keep().unwrap();
        fs::write(&path, text).unwrap();
        path
    }
}

/// PgBouncer's userlist quoting: double quotes, an embedded quote doubled.
fn userlist_quote(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}
