//! SCRAM verifiers derived from plain-text auth_file passwords, kept per generation.

use super::{ScramSecret, Secret, UserList};

/// Verifiers for plain-text secrets: deriving one costs 4096 PBKDF2 rounds, and a fresh
/// random salt at every login would also tell a prober which users exist (unknown users get
/// a stable fake salt). One per user per generation, so a reload picks up new passwords.
#[derive(Default)]
pub struct ScramCache {
    secrets: std::sync::Mutex<std::collections::HashMap<String, ScramSecret>>,
}

impl ScramCache {
    pub fn get(&self, user: &str, users: &UserList) -> Option<ScramSecret> {
        let secret = users.get(user)?;
        if !matches!(secret, Secret::Plain(_)) {
            return secret.to_scram();
        }
        let mut cache = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = cache.get(user) {
            return Some(cached.clone());
        }
        let derived = secret.to_scram()?;
        cache.insert(user.to_owned(), derived.clone());
        Some(derived)
    }
}
