//! A model-based test against a real PostgreSQL (issue 12, item 8): several clients run random
//! sequences of simple and extended queries, errors, COPY, BEGIN / COMMIT / ROLLBACK and
//! savepoints through pgmoat (fewer servers than clients, so servers move between them), each
//! tracking in a model what PostgreSQL must answer. Checked against pgmoat's decisions, not
//! the status it copies: every statement of an open transaction runs on the same backend
//! (pg_backend_pid()), no backend serves another client while a transaction holds it (so a
//! server is released only at status I), and every answer is the one for the request it
//! follows: none lost, duplicated or delivered to the wrong client (each carries a unique id).
//! The seed is printed; MODEL_SEED=n repeats a run.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use support::wire::{self, RawClient, RawMsg};
use support::*;

/// A small deterministic generator (xorshift64*), so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the model says about one client's session.
#[derive(Debug, Default)]
struct Model {
    in_tx: bool,
    failed: bool,
    savepoint: bool,
    /// The backend of the open transaction, once a statement told it.
    tx_pid: Option<i32>,
}

impl Model {
    fn status(&self) -> u8 {
        match (self.in_tx, self.failed) {
            (false, _) => b'I',
            (true, false) => b'T',
            (true, true) => b'E',
        }
    }
}

/// Backends held by an open transaction, by pid: which client holds each.
type Owners = Arc<Mutex<HashMap<i32, usize>>>;

struct Runner {
    who: usize,
    /// pgmoat's port, for cancel requests.
    port: u16,
    client: RawClient,
    model: Model,
    owners: Owners,
    next_id: u64,
    log: Vec<String>,
}

impl Runner {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        (self.who as u64) * 1_000_000 + self.next_id
    }

    /// A statement's answer told `pid` ran it: the same backend for the whole transaction,
    /// and never one another client's open transaction holds.
    fn saw_pid(&mut self, pid: i32) {
        if let Some(&owner) = self.owners.lock().unwrap().get(&pid)
            && owner != self.who
        {
            panic!(
                "client {} ran on backend {pid}, held by client {owner}'s open transaction\n{}",
                self.who,
                self.log.join("\n")
            );
        }
        if self.model.in_tx {
            match self.model.tx_pid {
                Some(p) => assert_eq!(
                    p,
                    pid,
                    "client {}: a transaction moved from backend {p} to {pid}\n{}",
                    self.who,
                    self.log.join("\n")
                ),
                None => {
                    self.model.tx_pid = Some(pid);
                    self.owners.lock().unwrap().insert(pid, self.who);
                }
            }
        }
    }

    fn end_tx(&mut self) {
        if let Some(pid) = self.model.tx_pid.take() {
            self.owners.lock().unwrap().remove(&pid);
        }
        self.model.in_tx = false;
        self.model.failed = false;
        self.model.savepoint = false;
    }

    /// Reads up to ReadyForQuery and checks its status against the model.
    async fn answer(&mut self, what: &str) -> Vec<RawMsg> {
        let msgs = self.read_all(what).await;
        self.check_status(&msgs, what);
        msgs
    }

    /// Reads up to ReadyForQuery.
    async fn read_all(&mut self, what: &str) -> Vec<RawMsg> {
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            self.client.until_ready(),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "client {}: no answer to {what}\n{}",
                self.who,
                self.log.join("\n")
            )
        })
        .unwrap_or_else(|e| panic!("client {}: {what}: {e}\n{}", self.who, self.log.join("\n")))
    }

    fn check_status(&self, msgs: &[RawMsg], what: &str) {
        let status = msgs.last().unwrap().body[0];
        assert_eq!(
            status as char,
            self.model.status() as char,
            "client {}: status after {what} ({})\n{}",
            self.who,
            wire::tags(msgs),
            self.log.join("\n")
        );
    }

    fn expect_error(&self, msgs: &[RawMsg], code: &str, what: &str) {
        let err = msgs
            .iter()
            .find(|m| m.tag == b'E')
            .map(wire::error_of)
            .unwrap_or_else(|| {
                panic!(
                    "client {}: {what}: no error in {}",
                    self.who,
                    wire::tags(msgs)
                )
            });
        assert_eq!(err.code, code, "client {}: {what}: {err}", self.who);
    }

    /// A row `(id, pid)` that must carry `id`.
    fn expect_row(&mut self, msgs: &[RawMsg], id: u64, what: &str) {
        let rows = wire::rows_or_error(msgs).unwrap_or_else(|e| {
            panic!("client {}: {what}: {e}\n{}", self.who, self.log.join("\n"))
        });
        assert_eq!(rows.len(), 1, "client {}: {what}: {rows:?}", self.who);
        let got: u64 = rows[0][0].as_deref().unwrap().parse().unwrap();
        assert_eq!(
            got, id,
            "client {}: {what} answered with another request's row",
            self.who
        );
        let pid: i32 = rows[0][1].as_deref().unwrap().parse().unwrap();
        self.saw_pid(pid);
    }

    async fn step(&mut self, rng: &mut Rng) {
        let roll = rng.below(100);
        let m = &self.model;
        if m.failed {
            // Inside a failed transaction: statements are refused until it ends.
            match roll {
                0..=29 if m.savepoint => {
                    self.log.push("ROLLBACK TO s".into());
                    self.client
                        .send(&wire::query("ROLLBACK TO SAVEPOINT s"))
                        .await;
                    self.model.failed = false;
                    self.answer("ROLLBACK TO").await;
                }
                0..=49 => {
                    let id = self.id();
                    self.log
                        .push(format!("select {id} in a failed transaction"));
                    self.client
                        .send(&wire::query(&format!("SELECT {id}, pg_backend_pid()")))
                        .await;
                    let msgs = self.answer("a statement in a failed transaction").await;
                    self.expect_error(&msgs, "25P02", "a statement in a failed transaction");
                }
                _ => {
                    let msgs = self.finish_tx(roll).await;
                    // COMMIT of a failed transaction is a rollback, as PostgreSQL says.
                    assert!(
                        wire::tags(&msgs).contains('C'),
                        "client {}: the end of a failed transaction: {}",
                        self.who,
                        wire::tags(&msgs)
                    );
                }
            }
            return;
        }
        match roll {
            0..=2 => {
                // A slow query and a cancel for it: either the query is canceled (57014, a
                // failed transaction inside one) or, if the cancel came too early or late,
                // it completes; never anything else, and nobody else is hit.
                let id = self.id();
                self.log.push(format!("cancel {id}"));
                self.client
                    .send(&wire::query(&format!(
                        "SELECT {id}, pg_backend_pid() FROM pg_sleep(0.5)"
                    )))
                    .await;
                wire::send_cancel_request(self.port, self.client.pid, self.client.secret).await;
                let msgs = self.read_all("a canceled query").await;
                if msgs.iter().any(|m| m.tag == b'E') {
                    self.expect_error(&msgs, "57014", "a canceled query");
                    if self.model.in_tx {
                        self.model.failed = true;
                    }
                } else {
                    self.expect_row(&msgs, id, "a query its cancel missed");
                }
                self.check_status(&msgs, "a canceled query");
            }
            3..=24 => {
                let id = self.id();
                self.log.push(format!("simple {id}"));
                self.client
                    .send(&wire::query(&format!("SELECT {id}, pg_backend_pid()")))
                    .await;
                let msgs = self.answer("a simple query").await;
                self.expect_row(&msgs, id, "a simple query");
            }
            25..=44 => {
                let id = self.id();
                self.log.push(format!("extended {id}"));
                let text = id.to_string();
                let mut out = wire::parse("", "SELECT $1::bigint, pg_backend_pid()");
                out.extend_from_slice(&wire::bind("", "", &[Some(&text)]));
                out.extend_from_slice(&wire::execute());
                out.extend_from_slice(&wire::sync());
                self.client.send(&out).await;
                let msgs = self.answer("an extended query").await;
                self.expect_row(&msgs, id, "an extended query");
            }
            45..=52 => {
                // Two queries pipelined in one write: two answers, in order.
                let (a, b) = (self.id(), self.id());
                self.log.push(format!("pipelined {a} {b}"));
                let mut out = wire::query(&format!("SELECT {a}, pg_backend_pid()"));
                out.extend_from_slice(&wire::query(&format!("SELECT {b}, pg_backend_pid()")));
                self.client.send(&out).await;
                let first = self.answer("the first pipelined query").await;
                self.expect_row(&first, a, "the first pipelined query");
                let second = self.answer("the second pipelined query").await;
                self.expect_row(&second, b, "the second pipelined query");
            }
            53..=59 => {
                let id = self.id();
                self.log.push(format!("copy {id}"));
                self.client
                    .send(&wire::query(&format!("COPY (SELECT {id}) TO STDOUT")))
                    .await;
                let msgs = self.answer("COPY TO STDOUT").await;
                let data: Vec<_> = msgs.iter().filter(|m| m.tag == b'd').collect();
                assert_eq!(data.len(), 1, "client {}: COPY rows", self.who);
                assert_eq!(
                    &data[0].body[..],
                    format!("{id}\n").as_bytes(),
                    "client {}: COPY row",
                    self.who
                );
            }
            60..=67 => {
                self.log.push("error".into());
                self.client.send(&wire::query("SELECT 1/0")).await;
                if self.model.in_tx {
                    self.model.failed = true;
                }
                let msgs = self.answer("a failing statement").await;
                self.expect_error(&msgs, "22012", "a failing statement");
            }
            68..=79 if !self.model.in_tx => {
                self.log.push("BEGIN".into());
                self.client.send(&wire::query("BEGIN")).await;
                self.model.in_tx = true;
                self.answer("BEGIN").await;
            }
            68..=79 => {
                self.log.push("SAVEPOINT s".into());
                self.client.send(&wire::query("SAVEPOINT s")).await;
                self.model.savepoint = true;
                self.answer("SAVEPOINT").await;
            }
            _ if self.model.in_tx => {
                self.finish_tx(roll).await;
            }
            _ => {
                // Outside a transaction a COMMIT only warns; the server is free either way.
                self.log.push("COMMIT outside".into());
                self.client.send(&wire::query("COMMIT")).await;
                self.answer("COMMIT outside a transaction").await;
            }
        }
        if self.log.len() > 40 {
            self.log.remove(0);
        }
    }

    /// Ends the transaction with COMMIT or ROLLBACK (by `roll`). Its backend is released
    /// for the check of others from the moment the statement is sent, since pgmoat may hand
    /// it on as soon as PostgreSQL answers.
    async fn finish_tx(&mut self, roll: u64) -> Vec<RawMsg> {
        let sql = if roll.is_multiple_of(2) {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        self.log.push(sql.into());
        self.end_tx();
        self.client.send(&wire::query(sql)).await;
        self.answer(sql).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_pipelines_keep_transactions_on_their_backend_and_answers_with_their_client() {
    let seed: u64 = std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("MODEL_SEED={seed}");
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = Pgmoat::start(
        &ConfigBuilder::new(&pki, &db)
            .set("default_pool_size", "2")
            .set("query_wait_timeout", "60")
            .build(),
    );
    let owners: Owners = Arc::default();
    let port = moat.port();
    let mut tasks = Vec::new();
    const CLIENTS: usize = 4;
    const STEPS: usize = 150;
    for who in 0..CLIENTS {
        let client = moat_raw(&moat, &pki, "alice", &[]).await;
        let owners = owners.clone();
        let mut rng = Rng(seed.wrapping_add((who as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
        tasks.push(tokio::spawn(async move {
            let mut runner = Runner {
                who,
                port,
                client,
                model: Model::default(),
                owners,
                next_id: 0,
                log: Vec::new(),
            };
            for _ in 0..STEPS {
                runner.step(&mut rng).await;
            }
            // End any open transaction so the others are not left waiting for its server.
            if runner.model.in_tx {
                runner.end_tx();
                runner.client.send(&wire::query("ROLLBACK")).await;
                runner.answer("the final ROLLBACK").await;
            }
            runner.next_id
        }));
    }
    let mut ids = 0;
    for task in tasks {
        ids += task
            .await
            .unwrap_or_else(|e| panic!("MODEL_SEED={seed}: {e}"));
    }
    assert!(ids > 0, "the clients ran statements");
}
