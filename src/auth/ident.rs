//! STUB (replaced by the real pg_ident.conf module on merge).
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{origin}:{line}: {reason}")]
pub struct IdentError {
    pub origin: String,
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct IdentMaps {
    entries: Vec<(String, String, String)>,
}

impl IdentMaps {
    pub fn load(path: &Path) -> Result<IdentMaps, IdentError> {
        let text = std::fs::read_to_string(path).map_err(|e| IdentError {
            origin: path.display().to_string(),
            line: 0,
            reason: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }
    pub fn parse(text: &str, _origin: &str) -> Result<IdentMaps, IdentError> {
        let entries = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3).then(|| (f[0].into(), f[1].into(), f[2].into()))
            })
            .collect();
        Ok(IdentMaps { entries })
    }
    pub fn has_map(&self, map: &str) -> bool {
        self.entries.iter().any(|e| e.0 == map)
    }
    pub fn allows(&self, map: &str, system_user: &str, pg_user: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.0 == map && e.1 == system_user && e.2 == pg_user)
    }
}
