//! Which host of a database entry a new server connection tries first.
//!
//! Every host is tried in each round (a standby known as such may have been promoted since),
//! but in an order that puts the likely winners first: hosts whose last login found a server
//! that suits target_session_attrs, spread by load_balance_hosts; then hosts not known yet;
//! then hosts known not to suit, or down. So a read-write pool logs in on the primary at the
//! first attempt in the common case, and rounds stay short during a failover.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::{HostHealth, HostStatus};
use crate::config::{LoadBalanceHosts, TargetSessionAttrs};

/// The health record of every host:port any pool connects to, shared by all pools, so what
/// one pool learns (a host down, a promotion) every other pool of that host knows too.
#[derive(Default)]
pub struct HostBook {
    hosts: Mutex<HashMap<(String, u16), Arc<HostHealth>>>,
}

impl HostBook {
    pub fn get(&self, host: &str, port: u16) -> Arc<HostHealth> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts
            .entry((host.to_owned(), port))
            .or_insert_with(|| Arc::new(HostHealth::new(host.to_owned(), port)))
            .clone()
    }

    /// Every host known, in name order (SHOW HOSTS, metrics).
    pub fn all(&self) -> Vec<Arc<HostHealth>> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = hosts.values().cloned().collect();
        all.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        all
    }
}

/// How likely a host is to give a suitable server, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Likelihood {
    Suits,
    Unknown,
    SecondChoice,
    Unsuitable,
    Down,
}

fn likelihood(status: &HostStatus, attrs: TargetSessionAttrs) -> Likelihood {
    match status {
        HostStatus::Up(role) if role.second_choice(attrs) => Likelihood::SecondChoice,
        HostStatus::Up(role) if role.suits(attrs) => Likelihood::Suits,
        HostStatus::Up(_) => Likelihood::Unsuitable,
        HostStatus::Unknown => Likelihood::Unknown,
        HostStatus::Down(_) => Likelihood::Down,
    }
}

/// The order in which one round tries `hosts` (indexes into it). `turn` advances for
/// round-robin.
pub fn try_order(
    hosts: &[Arc<HostHealth>],
    attrs: TargetSessionAttrs,
    balance: LoadBalanceHosts,
    turn: &AtomicUsize,
) -> Vec<usize> {
    let ranked: Vec<Likelihood> = hosts
        .iter()
        .map(|h| likelihood(&h.status().0, attrs))
        .collect();
    let mut order: Vec<usize> = (0..hosts.len()).collect();
    // Stable: within one likelihood, the configured order.
    order.sort_by_key(|&i| ranked[i]);
    // Spread over the best group only: the others are tried only when it fails.
    let best = ranked.iter().min().copied();
    let group = order
        .iter()
        .take_while(|&&i| Some(ranked[i]) == best)
        .count();
    if group > 1 {
        match balance {
            LoadBalanceHosts::Disable => {}
            LoadBalanceHosts::RoundRobin => {
                let start = turn.fetch_add(1, Ordering::Relaxed) % group;
                order[..group].rotate_left(start);
            }
            LoadBalanceHosts::Random => {
                order[..group].rotate_left(rand::random::<u32>() as usize % group)
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ServerRole;
    use std::time::Instant;

    const STANDBY: ServerRole = ServerRole {
        standby: true,
        read_only: false,
    };

    fn hosts(n: usize) -> Vec<Arc<HostHealth>> {
        (0..n)
            .map(|i| Arc::new(HostHealth::new(format!("pg{i}"), 5432)))
            .collect()
    }

    #[test]
    fn the_known_primary_comes_first_for_read_write() {
        let hs = hosts(3);
        hs[0].logged_in(STANDBY, Instant::now());
        hs[1].failed("refused".into());
        hs[2].logged_in(ServerRole::PRIMARY, Instant::now());
        let turn = AtomicUsize::new(0);
        let order = try_order(
            &hs,
            TargetSessionAttrs::ReadWrite,
            LoadBalanceHosts::RoundRobin,
            &turn,
        );
        assert_eq!(order, vec![2, 0, 1]);
    }

    #[test]
    fn round_robin_rotates_among_suitable_hosts_only() {
        let hs = hosts(3);
        for h in &hs[..2] {
            h.logged_in(STANDBY, Instant::now());
        }
        hs[2].logged_in(ServerRole::PRIMARY, Instant::now());
        let turn = AtomicUsize::new(0);
        let firsts: Vec<usize> = (0..4)
            .map(|_| {
                try_order(
                    &hs,
                    TargetSessionAttrs::Standby,
                    LoadBalanceHosts::RoundRobin,
                    &turn,
                )[0]
            })
            .collect();
        assert_eq!(firsts, vec![0, 1, 0, 1]);
        let order = try_order(
            &hs,
            TargetSessionAttrs::Standby,
            LoadBalanceHosts::Disable,
            &turn,
        );
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[test]
    fn prefer_standby_keeps_the_primary_for_last_and_unknown_hosts_in_list_order() {
        let hs = hosts(3);
        hs[0].logged_in(ServerRole::PRIMARY, Instant::now());
        let turn = AtomicUsize::new(0);
        let order = try_order(
            &hs,
            TargetSessionAttrs::PreferStandby,
            LoadBalanceHosts::Disable,
            &turn,
        );
        assert_eq!(order, vec![1, 2, 0]);
    }

    #[test]
    fn the_book_shares_one_record_per_address() {
        let book = HostBook::default();
        let a = book.get("pg1", 5432);
        a.failed("x".into());
        assert_eq!(book.get("pg1", 5432).failures(), 1);
        assert_eq!(book.get("pg1", 5433).failures(), 0);
        assert_eq!(book.all().len(), 2);
    }
}
