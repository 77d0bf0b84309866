//! Cancel keys. Each client gets its own random BackendKeyData; a CancelRequest carrying it
//! is forwarded to the server connection that client holds at that moment, over TLS when
//! server_tls_sslmode asks for it. Keys are 64 random bits, looked up exactly, so one client
//! cannot reach another's backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::backend::{BackendKey, BackendTarget, ConnectOptions, negotiate_tls};
use crate::state::Generation;

/// Where a cancel for a client goes right now.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub target: Arc<BackendTarget>,
    pub server_key: BackendKey,
}

/// One client's cancel target, which its session sets at every checkout and release. Each
/// client has its own lock, so a transaction takes no lock another client's transaction takes;
/// only logins, logouts and cancel requests use the registry's.
#[derive(Default)]
pub struct CancelSlot(Mutex<Option<CancelTarget>>);

impl CancelSlot {
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    fn get(&self) -> Option<CancelTarget> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<BackendKey, Arc<CancelSlot>>>,
}

impl CancelRegistry {
    /// A fresh, unused key for a new client, and the slot its session keeps its target in.
    pub fn register(&self) -> (BackendKey, Arc<CancelSlot>) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let key = BackendKey {
                pid: rand::random::<i32>() & i32::MAX,
                secret: rand::random(),
            };
            if key.pid != 0 && !clients.contains_key(&key) {
                let slot = Arc::new(CancelSlot::default());
                clients.insert(key, slot.clone());
                return (key, slot);
            }
        }
    }

    pub fn unregister(&self, key: BackendKey) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    pub fn lookup(&self, key: BackendKey) -> Option<CancelTarget> {
        let slot = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()?;
        slot.get()
    }
}

/// Sends PostgreSQL's CancelRequest for `target` on a new connection, with the same TLS
/// rules as any other server connection.
pub async fn send_cancel(
    target: &CancelTarget,
    generation: &Generation,
) -> Result<(), crate::backend::BackendError> {
    let addr = target.target.addr_string();
    let io_err = |source| crate::backend::BackendError::Connect {
        addr: addr.clone(),
        source,
    };
    let config = &generation.config;
    let tcp = tokio::time::timeout(
        config.server_connect_timeout.duration(),
        tokio::net::TcpStream::connect((target.target.host.as_str(), target.target.port)),
    )
    .await
    .map_err(|_| crate::backend::BackendError::Timeout {
        addr: addr.clone(),
        secs: config.server_connect_timeout.0,
    })?
    .map_err(io_err)?;
    let mut stream = negotiate_tls(
        tcp,
        &target.target,
        &ConnectOptions {
            sslmode: config.server_tls_sslmode,
            tls: generation.tls.connector.as_ref(),
            tls_epoch: generation.tls_epoch,
            timeout: config.server_connect_timeout.duration(),
            id: 0,
        },
    )
    .await?;
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(
        target.server_key.pid,
        target.server_key.secret,
        &mut buf,
    );
    stream.write_all(&buf).await.map_err(io_err)?;
    stream.flush().await.map_err(io_err)?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// A client's CancelRequest: forwarded to the server it holds right now, if any.
pub async fn forward_cancel(shared: &crate::state::Shared, key: BackendKey) {
    let Some(target) = shared.cancel.lookup(key) else {
        tracing::debug!("cancel request for an unknown key or an idle client; ignored");
        return;
    };
    let generation = shared.snapshot();
    match send_cancel(&target, &generation).await {
        Ok(()) => tracing::info!(
            server_pid = target.server_key.pid,
            "cancel request forwarded"
        ),
        Err(e) => tracing::warn!(error = %e, "forwarding a cancel request failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_unknown_keys_find_nothing() {
        let reg = CancelRegistry::default();
        let (a, slot) = reg.register();
        let (b, _) = reg.register();
        assert_ne!(a, b);
        assert!(reg.lookup(a).is_none());
        let server_key = BackendKey { pid: 7, secret: 8 };
        slot.set(Some(CancelTarget {
            target: Arc::new(BackendTarget {
                host: "localhost".into(),
                port: 5432,
                dbname: "app".into(),
                user: "app".into(),
                password: None,
                scram_keys: None,
            }),
            server_key,
        }));
        assert_eq!(reg.lookup(a).map(|t| t.server_key), Some(server_key));
        assert!(reg.lookup(b).is_none());
        assert!(
            reg.lookup(BackendKey {
                pid: a.pid,
                secret: a.secret.wrapping_add(1)
            })
            .is_none()
        );
        reg.unregister(a);
        assert!(!reg.clients.lock().unwrap().contains_key(&a));
    }
}
