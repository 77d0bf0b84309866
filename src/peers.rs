//! Peers: several pgmoat instances behind one TCP load balancer. A client's CancelRequest
//! comes on a new connection, which the balancer may send to any instance; so every cancel
//! key says which instance issued it, and an instance that gets a key of another forwards the
//! request there, as an ordinary CancelRequest. The owner then handles it like any cancel of
//! its own, with the same fail-closed rules.
//!
//! The key's 64 bits: the process-id half is 31 random bits (kept positive: some clients
//! need that); the secret half holds the peer id (14 bits), a hop count (2 bits) that each
//! forward lowers, so a misconfigured ring cannot bounce a request for ever, and 16 random
//! bits. 47 random bits in all, as many as PgBouncer's peer keys have, about.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::backend::{BackendKey, ConnectOptions, negotiate_tls};
use crate::config::{MAX_PEER_ID, PeerConfig};
use crate::generation::Generation;
use crate::stats::Metrics;

/// Forwards a request may still take when it is issued: 3 is enough for any sane setup
/// (one hop is the normal case).
pub const MAX_HOPS: u8 = 3;

const PEER_SHIFT: u32 = 18;
const HOPS_SHIFT: u32 = 16;
/// How long a peer gets to close the cancel connection after the request was sent.
const PEER_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Who issued a key, and how many more forwards it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOwner {
    /// 0: a key made without peers.
    pub peer_id: u16,
    pub hops: u8,
}

/// A fresh key for a client of instance `peer_id` (which must be 1..=16383).
pub fn new_key(peer_id: u16) -> BackendKey {
    debug_assert!((1..=MAX_PEER_ID).contains(&peer_id));
    BackendKey {
        pid: rand::random::<i32>() & i32::MAX,
        secret: secret(peer_id, MAX_HOPS, rand::random()),
    }
}

fn secret(peer_id: u16, hops: u8, random: u16) -> i32 {
    let bits = (u32::from(peer_id & MAX_PEER_ID) << PEER_SHIFT)
        | (u32::from(hops & 3) << HOPS_SHIFT)
        | u32::from(random);
    bits as i32
}

pub fn owner(key: BackendKey) -> KeyOwner {
    let bits = key.secret as u32;
    KeyOwner {
        peer_id: ((bits >> PEER_SHIFT) as u16) & MAX_PEER_ID,
        hops: ((bits >> HOPS_SHIFT) & 3) as u8,
    }
}

/// The key as its owner issued it (with the hop count it started with), for the lookup.
pub fn as_issued(key: BackendKey) -> BackendKey {
    with_hops(key, MAX_HOPS)
}

fn with_hops(key: BackendKey, hops: u8) -> BackendKey {
    let bits = key.secret as u32;
    let bits = (bits & !(3 << HOPS_SHIFT)) | (u32::from(hops & 3) << HOPS_SHIFT);
    BackendKey {
        pid: key.pid,
        secret: bits as i32,
    }
}

/// The cap on cancels in flight to each peer (its pool_size), kept across reloads.
#[derive(Default)]
pub struct PeerLimits {
    peers: Mutex<HashMap<u16, (usize, Arc<Semaphore>)>>,
}

impl PeerLimits {
    fn for_peer(&self, id: u16, size: usize) -> Arc<Semaphore> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let slot = peers
            .entry(id)
            .or_insert_with(|| (size, Arc::new(Semaphore::new(size))));
        if slot.0 != size {
            // A reload changed it: requests already on their way finish under the old cap.
            *slot = (size, Arc::new(Semaphore::new(size)));
        }
        slot.1.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("could not connect to peer {peer} at {addr}: {source}")]
    Connect {
        peer: u16,
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to peer {peer} at {addr} timed out")]
    Timeout { peer: u16, addr: String },
    #[error("peer {peer}: {source}")]
    Refused {
        peer: u16,
        source: crate::backend::BackendError,
    },
}

/// A cancel whose key belongs to peer `owner.peer_id`: forwarded there (with one hop less),
/// or dropped and counted when that peer is not configured, the hops are used up, too many
/// cancels are on their way to it, or it cannot be reached. Nothing else happens either way.
pub async fn forward(
    key: BackendKey,
    owner: KeyOwner,
    generation: &Generation,
    limits: &PeerLimits,
    metrics: &Metrics,
) {
    let config = &generation.config;
    let Some(peer) = config.peers.get(&owner.peer_id) else {
        tracing::warn!(
            peer = owner.peer_id,
            "cancel request for a peer that is not in [peers]; dropped"
        );
        metrics.cancel_request("peer_unknown");
        return;
    };
    if owner.hops == 0 {
        tracing::warn!(
            peer = owner.peer_id,
            "cancel request forwarded too often (a loop in [peers]?); dropped"
        );
        metrics.cancel_request("peer_hops");
        return;
    }
    let size = peer.pool_size.unwrap_or(config.default_pool_size).max(1);
    let Ok(_permit) = limits.for_peer(owner.peer_id, size).try_acquire_owned() else {
        tracing::warn!(
            peer = owner.peer_id,
            limit = size,
            "too many cancel requests on their way to this peer (its pool_size); dropped"
        );
        metrics.cancel_request("peer_limit");
        return;
    };
    let forwarded = with_hops(key, owner.hops - 1);
    let sent = send(owner.peer_id, peer, forwarded, generation);
    let sent = match config.cancel_wait_timeout.non_zero() {
        Some(limit) => match tokio::time::timeout(limit, sent).await {
            Ok(sent) => sent,
            Err(_) => Err(PeerError::Timeout {
                peer: owner.peer_id,
                addr: format!("{}:{}", peer.host, peer.port),
            }),
        },
        None => sent.await,
    };
    match sent {
        Ok(()) => {
            tracing::info!(peer = owner.peer_id, "cancel request forwarded to its peer");
            metrics.cancel_request("peer_forwarded");
        }
        Err(e) => {
            tracing::warn!(error = %e, "forwarding a cancel request to a peer failed");
            metrics.cancel_request("peer_failed");
        }
    }
}

/// One CancelRequest to a peer, under the TLS policy towards servers (server_tls_sslmode
/// and its CA): TLS when the peer accepts an SSLRequest, its certificate verified; in
/// plaintext only when that policy allows it (disable, or allow/prefer and the peer
/// declines). A refused certificate or a declined SSLRequest under require / verify-* is a
/// failure, never a fall-back. Connecting and the handshake are bounded by
/// server_connect_timeout each, whatever cancel_wait_timeout says.
async fn send(
    id: u16,
    peer: &PeerConfig,
    key: BackendKey,
    generation: &Generation,
) -> Result<(), PeerError> {
    let addr = format!("{}:{}", peer.host, peer.port);
    let config = &generation.config;
    let limit = config.server_connect_timeout.duration();
    let timed_out = || PeerError::Timeout {
        peer: id,
        addr: addr.clone(),
    };
    let io = |source| PeerError::Connect {
        peer: id,
        addr: addr.clone(),
        source,
    };
    let tcp = tokio::time::timeout(limit, TcpStream::connect((peer.host.as_str(), peer.port)))
        .await
        .map_err(|_| timed_out())?
        .map_err(io)?;
    let _ = tcp.set_nodelay(true);
    let server_tls = &generation.tls.server;
    let options = ConnectOptions {
        sslmode: server_tls.sslmode,
        channel_binding: config.server_channel_binding,
        tls: server_tls.connector.as_ref(),
        tls_epoch: generation.tls_epoch,
        timeout: limit,
        id: 0,
    };
    let mut stream =
        tokio::time::timeout(limit, negotiate_tls(tcp, (&peer.host, peer.port), &options))
            .await
            .map_err(|_| timed_out())?
            .map_err(|source| PeerError::Refused { peer: id, source })?;
    let mut request = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut request);
    stream.write_all(&request).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(PEER_CLOSE_WAIT, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_owner_and_hops_and_stays_positive() {
        for peer in [1, 2, 77, MAX_PEER_ID] {
            for _ in 0..100 {
                let key = new_key(peer);
                assert!(key.pid >= 0);
                assert_eq!(
                    owner(key),
                    KeyOwner {
                        peer_id: peer,
                        hops: MAX_HOPS
                    }
                );
                let forwarded = with_hops(key, 1);
                assert_eq!(owner(forwarded).hops, 1);
                assert_eq!(owner(forwarded).peer_id, peer);
                assert_eq!(forwarded.pid, key.pid);
                assert_eq!(as_issued(forwarded), key);
            }
        }
    }

    #[test]
    fn a_key_made_without_peers_belongs_to_nobody() {
        let key = BackendKey {
            pid: 5,
            secret: 0xffff,
        };
        assert_eq!(owner(key).peer_id, 0);
    }
}
