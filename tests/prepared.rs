//! Named prepared statements under transaction pooling: a statement follows its client to
//! whatever backend it gets next, clients' names never collide, Close and re-prepare work,
//! the per-backend cache is bounded (LRU), errors in a statement's text surface when it is
//! executed, and DISCARD ALL does not break a client's statements.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::wire::{self, tags};
use support::*;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

async fn pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

fn moat_with(pki: &Pki, db: &TestDb, pool: usize, max_prepared: usize) -> Pgmoat {
    Pgmoat::start(
        &ConfigBuilder::new(pki, db)
            .set_str("pool_mode", "transaction")
            .set("default_pool_size", &pool.to_string())
            .set("max_prepared_statements", &max_prepared.to_string())
            .set("query_wait_timeout", "30")
            .build(),
    )
}

#[tokio::test]
async fn a_statement_follows_its_client_to_another_backend() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = moat_with(&pki, &db, 2, 200);
    let a = moat_client(&moat, &pki, "alice").await;
    let h1 = moat_client(&moat, &pki, "alice").await;
    let h2 = moat_client(&moat, &pki, "alice").await;

    let stmt = a
        .prepare("SELECT pg_backend_pid(), $1::int * 2")
        .await
        .unwrap();
    // h1 holds one backend, so `a` runs on the other one...
    h1.batch_execute("BEGIN").await.unwrap();
    let x = pid(&h1).await;
    let row = a.query_one(&stmt, &[&21]).await.unwrap();
    let y: i32 = row.get(0);
    assert_eq!(row.get::<_, i32>(1), 42);
    assert_ne!(x, y);
    // ...then h2 takes that one and h1 lets go of the first: `a` must now use a backend it
    // may never have prepared on.
    h2.batch_execute("BEGIN").await.unwrap();
    assert_eq!(pid(&h2).await, y);
    h1.batch_execute("COMMIT").await.unwrap();
    let row = a.query_one(&stmt, &[&5]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), x, "expected the other backend");
    assert_eq!(row.get::<_, i32>(1), 10);
    h2.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_with_prepared_statements_over_two_backends() {
    let pki = Arc::new(Pki::new());
    let db = TestDb::start(&pki);
    let moat = Arc::new(moat_with(&pki, &db, 2, 200));
    let mut tasks = Vec::new();
    for c in 0..8i32 {
        let (moat, pki) = (moat.clone(), pki.clone());
        tasks.push(tokio::spawn(async move {
            let client = moat_client(&moat, &pki, "alice").await;
            // One statement every client shares, one of its own.
            let shared = client.prepare("SELECT $1::int + 1").await.unwrap();
            let own = client
                .prepare(&format!("SELECT $1::int * {}", c + 2))
                .await
                .unwrap();
            let insert = client
                .prepare("INSERT INTO items (v) VALUES ($1)")
                .await
                .unwrap();
            let mut backends = std::collections::BTreeSet::new();
            for i in 0..15i32 {
                let in_tx = i % 3 == 0;
                if in_tx {
                    client.batch_execute("BEGIN").await.unwrap();
                }
                let one: i32 = client.query_one(&shared, &[&i]).await.unwrap().get(0);
                let two: i32 = client.query_one(&own, &[&i]).await.unwrap().get(0);
                assert_eq!((one, two), (i + 1, i * (c + 2)), "client {c} round {i}");
                client
                    .execute(&insert, &[&format!("c{c}-{i}")])
                    .await
                    .unwrap();
                backends.insert(pid(&client).await);
                if in_tx {
                    client.batch_execute("COMMIT").await.unwrap();
                }
            }
            backends.len()
        }));
    }
    let mut moved = 0;
    for task in tasks {
        let backends = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("prepared-statement clients hung")
            .unwrap();
        moved += usize::from(backends > 1);
    }
    assert_eq!(db.count("SELECT count(*) FROM items"), 8 * 15);
    assert!(
        moved > 0,
        "no client ever changed backend: the test proved nothing"
    );
}

/// Parse "stmt" for `sql` (answered by pgmoat alone when `prepare_only`, else together with
/// a Describe, which needs a server).
async fn prepare_raw(client: &mut RawClient, name: &str, sql: &str, prepare_only: bool) {
    let mut out = wire::parse(name, sql);
    if !prepare_only {
        out.extend_from_slice(&wire::describe_statement(name));
    }
    out.extend_from_slice(&wire::sync());
    client.round_trip(&out).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_statement_name_from_many_clients_never_collides() {
    let pki = Arc::new(Pki::new());
    let db = TestDb::start(&pki);
    let moat = Arc::new(moat_with(&pki, &db, 2, 200));
    let mut tasks = Vec::new();
    for c in 0..6 {
        let (moat, pki) = (moat.clone(), pki.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = moat_raw(&moat, &pki, "alice", &[]).await;
            let sql = format!("SELECT $1::text || ' from client {c}'");
            prepare_raw(&mut client, "stmt", &sql, c % 2 == 0).await;
            for i in 0..10 {
                let arg = i.to_string();
                let rows = client.exec_prepared("stmt", &[Some(&arg)]).await.unwrap();
                assert_eq!(rows, vec![vec![Some(format!("{i} from client {c}"))]]);
            }
            client.terminate().await;
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("clients hung")
            .unwrap();
    }
}

#[tokio::test]
async fn close_then_prepare_again() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = moat_with(&pki, &db, 1, 200);

    // tokio-postgres sends Close when a Statement is dropped.
    let client = moat_client(&moat, &pki, "alice").await;
    let stmt = client.prepare("SELECT $1::int - 1").await.unwrap();
    assert_eq!(
        client
            .query_one(&stmt, &[&1])
            .await
            .unwrap()
            .get::<_, i32>(0),
        0
    );
    drop(stmt);
    let stmt = client.prepare("SELECT $1::int - 1").await.unwrap();
    assert_eq!(
        client
            .query_one(&stmt, &[&8])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );

    // A name closed by its client is gone for that client, and free for new text.
    let mut raw_client = moat_raw(&moat, &pki, "alice", &[]).await;
    prepare_raw(&mut raw_client, "s", "SELECT 'first'", false).await;
    assert_eq!(
        raw_client.exec_prepared("s", &[]).await.unwrap(),
        vec![vec![Some("first".to_owned())]]
    );
    let mut close = wire::close_statement("s");
    close.extend_from_slice(&wire::sync());
    raw_client.send(&close).await;
    let answer = raw_client.until_ready().await.unwrap();
    assert_eq!(tags(&answer), "3Z", "expected CloseComplete, ReadyForQuery");
    let err = raw_client.exec_prepared("s", &[]).await.unwrap_err();
    assert_eq!(err.code, "26000", "{err}");
    prepare_raw(&mut raw_client, "s", "SELECT 'second'", true).await;
    // Describe alone on a backend that never saw "s": pgmoat prepares it there first and
    // swallows that ParseComplete.
    let mut describe = wire::describe_statement("s");
    describe.extend_from_slice(&wire::sync());
    raw_client.send(&describe).await;
    let answer = raw_client.until_ready().await.unwrap();
    assert_eq!(
        tags(&answer),
        "tTZ",
        "expected ParameterDescription, RowDescription"
    );
    assert_eq!(
        raw_client.exec_prepared("s", &[]).await.unwrap(),
        vec![vec![Some("second".to_owned())]]
    );
}

#[tokio::test]
async fn a_cache_of_two_serves_five_statements_correctly() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = moat_with(&pki, &db, 1, 2);
    let a = moat_client(&moat, &pki, "alice").await;
    let b = moat_client(&moat, &pki, "alice").await;
    let mut a_stmts = Vec::new();
    let mut b_stmts = Vec::new();
    for k in 0..5 {
        // a and b share the text of three statements, so they share server statements too.
        a_stmts.push(a.prepare(&format!("SELECT $1::int + {k}")).await.unwrap());
        let b_sql = if k < 3 {
            format!("SELECT $1::int + {k}")
        } else {
            format!("SELECT $1::int * {k}")
        };
        b_stmts.push(b.prepare(&b_sql).await.unwrap());
    }
    for round in 0..4i32 {
        for k in 0..5i32 {
            let got: i32 = a
                .query_one(&a_stmts[k as usize], &[&round])
                .await
                .unwrap()
                .get(0);
            assert_eq!(got, round + k, "a: round {round} statement {k}");
            let got: i32 = b
                .query_one(&b_stmts[k as usize], &[&round])
                .await
                .unwrap()
                .get(0);
            let want = if k < 3 { round + k } else { round * k };
            assert_eq!(got, want, "b: round {round} statement {k}");
        }
    }
    // The one backend holds at most max_prepared_statements of them.
    let held: usize = text_value(&a, "SELECT count(*) FROM pg_prepared_statements")
        .await
        .parse()
        .unwrap();
    assert!(held <= 2, "{held} statements prepared on the backend");
}

#[tokio::test]
async fn invalid_statement_text_errors_when_executed_and_nothing_else_breaks() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = moat_with(&pki, &db, 1, 200);

    // A prepare-only batch is answered by pgmoat, so the syntax error waits for execution.
    let mut client = moat_raw(&moat, &pki, "alice", &[]).await;
    let mut prepare = wire::parse("bad", "SELEC 1");
    prepare.extend_from_slice(&wire::sync());
    client.send(&prepare).await;
    assert_eq!(tags(&client.until_ready().await.unwrap()), "1Z");
    prepare_raw(&mut client, "good", "SELECT 'fine'", true).await;
    for _ in 0..2 {
        let err = client.exec_prepared("bad", &[]).await.unwrap_err();
        assert_eq!(err.code, "42601", "{err}");
        assert_eq!(
            client.exec_prepared("good", &[]).await.unwrap(),
            vec![vec![Some("fine".to_owned())]]
        );
    }
    // Parse, Bind and Execute of a bad statement in one batch: one error, then all is well.
    let mut batch = wire::parse("worse", "SELECT FROM WHERE");
    batch.extend_from_slice(&wire::bind("", "worse", &[]));
    batch.extend_from_slice(&wire::execute());
    batch.extend_from_slice(&wire::sync());
    let err = client.round_trip(&batch).await.unwrap_err();
    assert_eq!(err.code, "42601", "{err}");
    assert_eq!(client.value("SELECT 'after'").await, "after");

    // tokio-postgres prepares with a Describe, so it learns at prepare time.
    let tp = moat_client(&moat, &pki, "alice").await;
    let err = tp.prepare("SELEC 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::SYNTAX_ERROR), "{err:?}");
    assert_eq!(pid(&tp).await, pid(&tp).await);
}

#[tokio::test]
async fn statements_survive_discard_all_and_deallocate_all() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = moat_with(&pki, &db, 1, 200);
    let a = moat_client(&moat, &pki, "alice").await;
    let b = moat_client(&moat, &pki, "alice").await;
    let a_stmt = a.prepare("SELECT $1::int * 3").await.unwrap();
    let b_stmt = b.prepare("SELECT $1::int * 5").await.unwrap();
    assert_eq!(
        a.query_one(&a_stmt, &[&1]).await.unwrap().get::<_, i32>(0),
        3
    );
    assert_eq!(
        b.query_one(&b_stmt, &[&1]).await.unwrap().get::<_, i32>(0),
        5
    );

    for reset in ["DISCARD ALL", "DEALLOCATE ALL"] {
        // The pool's only backend forgets every statement on it, b's included.
        a.batch_execute(reset).await.unwrap();
        assert_eq!(
            a.query_one(&a_stmt, &[&2]).await.unwrap().get::<_, i32>(0),
            6,
            "a after {reset}"
        );
        assert_eq!(
            b.query_one(&b_stmt, &[&2]).await.unwrap().get::<_, i32>(0),
            10,
            "b after {reset}"
        );
    }
}

/// Execute of a named portal, at most `max_rows` rows (0 = all).
fn execute_portal(portal: &str, max_rows: i32) -> bytes::BytesMut {
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::execute(portal, max_rows, &mut out).unwrap();
    out
}

#[tokio::test]
async fn eviction_does_not_close_an_open_portal() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = moat_with(&pki, &db, 1, 2);
    let mut client = moat_raw(&moat, &pki, "alice", &[]).await;
    client.simple("BEGIN").await.unwrap();

    // A cursor-style fetch (pgjdbc with a fetch size does this): a named portal read in
    // parts, other statements run in between.
    let mut open = wire::parse("series", "SELECT generate_series(1, 9)");
    open.extend_from_slice(&wire::bind("cursor", "series", &[]));
    open.extend_from_slice(&execute_portal("cursor", 3));
    open.extend_from_slice(&wire::sync());
    let rows = client.round_trip(&open).await.unwrap();
    assert_eq!(rows.len(), 3);
    for (name, sql) in [("two", "SELECT 2"), ("three", "SELECT 3")] {
        prepare_raw(&mut client, name, sql, false).await;
        client.exec_prepared(name, &[]).await.unwrap();
    }
    // The cursor's statement really was pushed out of the backend's cache of two.
    let cached = client
        .value("SELECT string_agg(statement, ',') FROM pg_prepared_statements")
        .await;
    assert!(!cached.contains("generate_series"), "{cached}");
    let mut more = execute_portal("cursor", 3);
    more.extend_from_slice(&wire::sync());
    let rows = client
        .round_trip(&more)
        .await
        .unwrap_or_else(|e| panic!("fetching more from the cursor: {e}"));
    assert_eq!(
        rows,
        (4..=6)
            .map(|i| vec![Some(i.to_string())])
            .collect::<Vec<_>>()
    );
    client.simple("COMMIT").await.unwrap();
}

/// Statement poisoning: a client reads the server-side name of a statement pgmoat prepared
/// for someone else (pg_prepared_statements shows it), drops it and prepares other SQL under
/// that name, in plain SQL or inside DO/EXECUTE. The victim's next execution still runs its
/// own statement: an SQL PREPARE pins the attacker's server to the attacker, a DEALLOCATE
/// (by its command tag, or seen by pgmoat's check after a DO) makes pgmoat forget what it
/// prepared on that server, and a server whose statements are not pgmoat's is reset.
#[tokio::test(flavor = "multi_thread")]
async fn another_client_cannot_replace_a_pooled_statement() {
    let pki = Pki::new();
    let db = TestDb::start(&pki);
    let moat = moat_with(&pki, &db, 2, 200);
    let victim = moat_client(&moat, &pki, "alice").await;
    let statement = victim.prepare("SELECT $1::int + 1000").await.unwrap();
    let run = async |victim: &Client| -> i32 {
        let row = victim.query_one(&statement, &[&1i32]).await.unwrap();
        row.get(0)
    };
    assert_eq!(run(&victim).await, 1001);
    let attacks = [
        // Drops it only, where pgmoat sees no DEALLOCATE tag.
        "DO $$BEGIN EXECUTE format('DEALLOCATE %I', '{name}'); END$$",
        // Drops and replaces it in plain SQL.
        "DEALLOCATE \"{name}\"; PREPARE \"{name}\" (int) AS SELECT 666",
        // The same inside DO.
        "DO $$BEGIN EXECUTE format('DEALLOCATE %I', '{name}'); \
         EXECUTE format('PREPARE %I (int) AS SELECT 666', '{name}'); END$$",
    ];
    // The previous attacker stays until the next one has struck, so the server its SQL
    // PREPARE pinned is not the one the next attacker gets.
    let mut previous: Option<Client> = None;
    for attack in attacks {
        let attacker = moat_client(&moat, &pki, "alice").await;
        // The server the victim just used, with pgmoat's statement on it. The previous
        // attacker's server may still be on its way back (pgmoat checks and resets it after
        // the client has its answer) and be lent first, without the statement: the victim
        // then runs again, until the attacker lands on a server that has it.
        let mut found = None;
        for _ in 0..50 {
            let names = attacker
                .simple_query("SELECT name FROM pg_prepared_statements WHERE NOT from_sql")
                .await
                .unwrap();
            found = names.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            if found.is_some() {
                break;
            }
            assert_eq!(run(&victim).await, 1001, "after {attack}");
        }
        let name = found.unwrap_or_else(|| {
            panic!("before {attack}: the attacker sees no pgmoat statement (positive control)")
        });
        assert!(name.starts_with("pgmoat_"), "{name}");
        attacker
            .batch_execute(&attack.replace("{name}", &name))
            .await
            .unwrap();
        drop(previous.replace(attacker));
        for _ in 0..3 {
            assert_eq!(run(&victim).await, 1001, "after {attack}");
        }
    }
}
