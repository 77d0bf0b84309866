//! A model test of the server lifecycle: random sequences of client messages (simple and
//! extended protocol, transactions, COPY FROM STDIN, statements that make session state),
//! server answers, cancels, server failures, client disconnects and reloads, run against a
//! simulated PostgreSQL backend whose true state the model knows. pgmoat's own parts decide:
//! `relay::TxState` tracks the protocol from both directions, `relay::effects` classifies the
//! SQL, `backend::lifecycle::next_step` decides what becomes of a handed-back server, and
//! `CancelFlight` counts cancels in flight. The property: no server ever reaches the idle set
//! unless the simulated backend is truly clean (nothing pending, no transaction, no COPY, no
//! session state, no cancel on its way, its pool current).

use std::collections::VecDeque;
use std::sync::Arc;

use pgmoat::backend::lifecycle::{CancelFlight, CancelTicket, Facts, ResetNeed, Step, next_step};
use pgmoat::backend::{CloseReason, PinReasons, ServerState};
use pgmoat::relay::TxState;
use pgmoat::relay::effects::{Effects, classify};
use proptest::prelude::*;

/// What a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    /// A Query with this SQL.
    Query(&'static str),
    Parse,
    Bind,
    /// Execute; `true` for a COPY FROM STDIN portal.
    Execute(bool),
    Sync,
    CopyData,
    CopyDone,
    CopyFail,
}

impl Msg {
    fn tag(self) -> u8 {
        match self {
            Msg::Query(_) => b'Q',
            Msg::Parse => b'P',
            Msg::Bind => b'B',
            Msg::Execute(_) => b'E',
            Msg::Sync => b'S',
            Msg::CopyData => b'd',
            Msg::CopyDone => b'c',
            Msg::CopyFail => b'f',
        }
    }
}

const COPY_SQL: &str = "COPY items FROM STDIN";

/// Well-formed units of client traffic, each a batch or a few: what a real driver sends.
fn unit() -> impl Strategy<Value = Vec<Msg>> {
    let sql = prop_oneof![
        Just("SELECT 1"),
        Just("BEGIN"),
        Just("COMMIT"),
        Just("ROLLBACK"),
        Just("INSERT INTO items (v) VALUES ('x')"),
        Just("CREATE TEMP TABLE t (x int)"),
        Just("SELECT pg_advisory_lock(1)"),
        Just("DISCARD ALL"),
        Just("SET work_mem = '8MB'"),
    ];
    prop_oneof![
        sql.prop_map(|s| vec![Msg::Query(s)]),
        Just(vec![Msg::Parse, Msg::Bind, Msg::Execute(false), Msg::Sync]),
        Just(vec![Msg::Query(COPY_SQL), Msg::CopyData, Msg::CopyDone]),
        Just(vec![Msg::Query(COPY_SQL), Msg::CopyData, Msg::CopyFail]),
        // tokio-postgres' extended COPY: the Sync right after Execute is ignored.
        Just(vec![
            Msg::Parse,
            Msg::Bind,
            Msg::Execute(true),
            Msg::Sync,
            Msg::CopyData,
            Msg::CopyDone,
            Msg::Sync
        ]),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The client sends its next message (pgmoat forwards it at once).
    ClientSends,
    /// The backend handles one message of its input.
    ServerWorks,
    CancelStarts,
    CancelEnds,
    CancelGivesUp,
    ServerFails,
    ClientLeaves,
    Reload,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::ClientSends),
        6 => Just(Event::ServerWorks),
        1 => Just(Event::CancelStarts),
        1 => Just(Event::CancelEnds),
        1 => Just(Event::CancelGivesUp),
        1 => Just(Event::ServerFails),
        1 => Just(Event::ClientLeaves),
        1 => Just(Event::Reload),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    CopyIn {
        extended: bool,
    },
    /// After an error in an extended-protocol batch: discard until Sync.
    SkipToSync,
}

/// The simulated backend: its true state.
#[derive(Debug)]
struct Backend {
    input: VecDeque<Msg>,
    status: u8,
    mode: Mode,
    /// Session state that outlives transactions (temp table, advisory lock).
    session_state: bool,
    /// Inside an extended-protocol batch (its implicit transaction) until a Sync.
    in_batch: bool,
}

/// What the backend answers that pgmoat looks at.
enum Answer {
    Ready(u8),
    CopyIn,
    Nothing,
}

impl Backend {
    fn new() -> Backend {
        Backend {
            input: VecDeque::new(),
            status: b'I',
            mode: Mode::Normal,
            session_state: false,
            in_batch: false,
        }
    }

    fn clean(&self) -> bool {
        self.input.is_empty()
            && self.status == b'I'
            && self.mode == Mode::Normal
            && !self.session_state
            && !self.in_batch
    }

    fn run_sql(&mut self, sql: &str) {
        match sql {
            "BEGIN" => self.status = b'T',
            "COMMIT" | "ROLLBACK" => self.status = b'I',
            "CREATE TEMP TABLE t (x int)" | "SELECT pg_advisory_lock(1)" => {
                self.session_state = true
            }
            "DISCARD ALL" if self.status == b'I' => self.session_state = false,
            _ => {}
        }
    }

    /// Handles the next input message the way PostgreSQL does.
    fn work(&mut self) -> Answer {
        let Some(msg) = self.input.pop_front() else {
            return Answer::Nothing;
        };
        match (self.mode, msg) {
            (Mode::Normal, Msg::Query(COPY_SQL)) => {
                self.mode = Mode::CopyIn { extended: false };
                Answer::CopyIn
            }
            (Mode::Normal, Msg::Query(sql)) => {
                self.run_sql(sql);
                Answer::Ready(self.status)
            }
            (Mode::Normal, Msg::Execute(true)) => {
                self.in_batch = true;
                self.mode = Mode::CopyIn { extended: true };
                Answer::CopyIn
            }
            (Mode::Normal, Msg::Sync) => {
                self.in_batch = false;
                Answer::Ready(self.status)
            }
            (Mode::Normal, Msg::Parse | Msg::Bind | Msg::Execute(false)) => {
                self.in_batch = true;
                Answer::Nothing
            }
            (Mode::Normal, _) => Answer::Nothing,
            (Mode::CopyIn { extended }, Msg::CopyDone) => {
                self.mode = Mode::Normal;
                if extended {
                    Answer::Nothing
                } else {
                    Answer::Ready(self.status)
                }
            }
            (Mode::CopyIn { extended }, Msg::CopyFail) => {
                if extended {
                    self.mode = Mode::SkipToSync;
                    Answer::Nothing
                } else {
                    self.mode = Mode::Normal;
                    Answer::Ready(self.status)
                }
            }
            // Syncs (and data) are ignored in copy-in mode.
            (Mode::CopyIn { .. }, _) => Answer::Nothing,
            (Mode::SkipToSync, Msg::Sync) => {
                self.mode = Mode::Normal;
                self.in_batch = false;
                Answer::Ready(self.status)
            }
            (Mode::SkipToSync, _) => Answer::Nothing,
        }
    }
}

/// One server connection as pgmoat and the model see it.
struct Server {
    backend: Backend,
    state: ServerState,
    flight: Arc<CancelFlight>,
    retired: bool,
}

/// The one client of this model and what pgmoat tracks for it.
struct Client {
    script: VecDeque<Msg>,
    /// The server it holds, with the relay's view of it.
    holding: Option<(Server, TxState)>,
    pinned: bool,
}

struct Model {
    client: Client,
    idle: Vec<Server>,
    /// Handed back with a cancel in flight, waiting for it.
    being_canceled: Vec<(Server, ResetNeed)>,
    /// Cancels on their way: the server's flight, and the ticket.
    tickets: Vec<(Arc<CancelFlight>, CancelTicket)>,
    reloads: u32,
    /// Servers that went back to the idle set, for the property.
    returned: usize,
}

impl Model {
    fn new(script: Vec<Msg>) -> Model {
        Model {
            client: Client {
                script: script.into(),
                holding: None,
                pinned: false,
            },
            idle: Vec::new(),
            being_canceled: Vec::new(),
            tickets: Vec::new(),
            reloads: 0,
            returned: 0,
        }
    }

    fn checkout(&mut self) -> (Server, TxState) {
        let mut server = self.idle.pop().unwrap_or_else(|| Server {
            backend: Backend::new(),
            state: ServerState::Idle,
            flight: Arc::new(CancelFlight::default()),
            retired: false,
        });
        assert!(
            server.backend.clean(),
            "an unclean server was lent: {:?}",
            server.backend
        );
        assert!(server.state.may_become(ServerState::Lent { client: 1 }));
        server.state = ServerState::Lent { client: 1 };
        (server, TxState::default())
    }

    /// The one way back to the idle set: `next_step`, until it returns or closes.
    fn hand_back(&mut self, mut server: Server, protocol_idle: bool, mut reset: ResetNeed) {
        if matches!(server.state, ServerState::Pinned { .. }) {
            server.state = ServerState::Lent { client: 1 };
        }
        loop {
            let facts = Facts {
                protocol_idle: protocol_idle && server.backend.input.is_empty(),
                cancels_in_flight: server.flight.in_flight(),
                cancel_in_doubt: server.flight.in_doubt(),
                reset,
                retire: server.retired.then_some(CloseReason::PoolRetired),
            };
            match next_step(&facts) {
                Step::ReturnToPool(_) => {
                    assert!(
                        server.backend.clean(),
                        "a server went back to the pool unclean: {:?} ({facts:?})",
                        server.backend
                    );
                    assert_eq!(server.flight.in_flight(), 0, "with a cancel in flight");
                    assert!(
                        !server.flight.in_doubt(),
                        "with a cancel that may still land"
                    );
                    assert!(!server.retired, "from a retired pool");
                    assert!(server.state.may_become(ServerState::Idle));
                    server.state = ServerState::Idle;
                    self.returned += 1;
                    self.idle.push(server);
                    return;
                }
                Step::AwaitCancels => {
                    server.state = ServerState::BeingCanceled { client: 1 };
                    self.being_canceled.push((server, reset));
                    return;
                }
                Step::Reset(_) => {
                    assert!(server.state.may_become(ServerState::Resetting));
                    server.state = ServerState::Resetting;
                    // DISCARD ALL on a server at ReadyForQuery 'I'.
                    server.backend.session_state = false;
                    reset = ResetNeed::Nothing;
                }
                Step::Close(_) => return,
            }
        }
    }

    /// After a relay ended at an idle point: pgmoat's session logic on what the statements
    /// of the transaction may have done (the check of PostgreSQL is the model's truth).
    fn settle(&mut self, server: Server, effects: Effects) {
        if !effects.needs_probe(self.client.pinned) {
            if self.client.pinned {
                self.client.holding = Some((server, TxState::default()));
            } else {
                self.hand_back(server, true, ResetNeed::Nothing);
            }
            return;
        }
        if server.backend.session_state {
            let mut server = server;
            server.state = ServerState::Pinned {
                client: 1,
                why: PinReasons::TEMP_TABLE,
            };
            self.client.pinned = true;
            self.client.holding = Some((server, TxState::default()));
        } else {
            self.client.pinned = false;
            self.hand_back(server, true, ResetNeed::Nothing);
        }
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::ClientSends => {
                let Some(msg) = self.client.script.pop_front() else {
                    return;
                };
                if self.client.holding.is_none() {
                    let lent = self.checkout();
                    self.client.holding = Some(lent);
                }
                let (server, tx) = self.client.holding.as_mut().unwrap();
                tx.client_message(msg.tag());
                if let Msg::Query(sql) = msg {
                    tx.effects |= classify(sql.as_bytes());
                }
                server.backend.input.push_back(msg);
            }
            Event::ServerWorks => {
                let Some((server, tx)) = self.client.holding.as_mut() else {
                    return;
                };
                match server.backend.work() {
                    Answer::Ready(status) => {
                        tx.outstanding = tx.outstanding.saturating_sub(1);
                        tx.status = status;
                    }
                    Answer::CopyIn => {
                        tx.copy_in_started();
                    }
                    Answer::Nothing => {}
                }
                // The relay ends where transaction mode may give the server back (or, for a
                // pinned client, check its state).
                if tx.server_idle() {
                    let (server, tx) = self.client.holding.take().unwrap();
                    self.settle(server, tx.effects);
                }
            }
            Event::CancelStarts => {
                if let Some((server, _)) = &self.client.holding {
                    self.tickets
                        .push((server.flight.clone(), server.flight.start()));
                }
            }
            Event::CancelEnds | Event::CancelGivesUp => {
                if !self.tickets.is_empty() {
                    let (flight, ticket) = self.tickets.remove(0);
                    // Given up after the request was written (cancel_wait_timeout, or
                    // PostgreSQL slow to close): it may still land.
                    let unconfirmed = flight.writing();
                    if event == Event::CancelEnds {
                        unconfirmed.confirm();
                    }
                    drop(ticket);
                }
                let waiting = std::mem::take(&mut self.being_canceled);
                for (server, reset) in waiting {
                    if server.flight.in_flight() == 0 {
                        self.hand_back(server, true, reset);
                    } else {
                        self.being_canceled.push((server, reset));
                    }
                }
            }
            Event::ServerFails => {
                // FATAL or a dropped connection: the relay ends with ServerGone; closed.
                self.client.holding = None;
                self.client.pinned = false;
            }
            Event::ClientLeaves => {
                if let Some((server, tx)) = self.client.holding.take() {
                    let reset = if self.client.pinned || tx.effects.needs_probe(false) {
                        ResetNeed::DiscardAll
                    } else {
                        ResetNeed::Nothing
                    };
                    self.hand_back(server, tx.server_idle(), reset);
                }
                self.client.pinned = false;
                // A new client, with what is left of the script.
            }
            Event::Reload => {
                self.reloads += 1;
                // The pool is replaced: every server of it is retired; idle ones close.
                self.idle.clear();
                if let Some((server, _)) = self.client.holding.as_mut() {
                    server.retired = true;
                }
                for (server, _) in &mut self.being_canceled {
                    server.retired = true;
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_server_reaches_the_idle_set_unclean(
        units in proptest::collection::vec(unit(), 1..12),
        events in proptest::collection::vec(event(), 1..200),
    ) {
        let script: Vec<Msg> = units.into_iter().flatten().collect();
        let mut model = Model::new(script);
        for event in events {
            model.step(event);
        }
        // Drain: every cancel ends, the client finishes its script and leaves.
        model.tickets.clear();
        model.step(Event::CancelEnds);
        for _ in 0..500 {
            model.step(Event::ClientSends);
            model.step(Event::ServerWorks);
        }
        model.step(Event::ClientLeaves);
        model.step(Event::CancelEnds);
        for server in &model.idle {
            prop_assert!(server.backend.clean());
        }
    }
}

/// The property is not vacuous: servers do go back to the pool in these runs, and a relay
/// that gave a server back as soon as ReadyForQuery said 'I' (ignoring COPY's ignored Sync)
/// would be caught.
#[test]
fn the_model_catches_a_server_handed_back_mid_copy() {
    let script = vec![
        Msg::Parse,
        Msg::Bind,
        Msg::Execute(true),
        Msg::Sync,
        Msg::CopyData,
        Msg::CopyDone,
        Msg::Sync,
    ];
    let mut model = Model::new(script);
    for _ in 0..4 {
        model.step(Event::ClientSends);
    }
    // Execute starts the COPY; the Sync after it is ignored.
    model.step(Event::ServerWorks);
    model.step(Event::ServerWorks);
    model.step(Event::ServerWorks);
    model.step(Event::ServerWorks);
    let (server, tx) = model
        .client
        .holding
        .as_ref()
        .expect("still held during the COPY");
    assert_eq!(server.backend.mode, Mode::CopyIn { extended: true });
    assert!(!tx.server_idle(), "pgmoat knows the COPY is open");
    for _ in 0..3 {
        model.step(Event::ClientSends);
        model.step(Event::ServerWorks);
    }
    model.step(Event::ServerWorks);
    assert_eq!(
        model.returned, 1,
        "given back once the COPY and its Sync are done"
    );
    let naive = Facts {
        protocol_idle: true,
        cancels_in_flight: 0,
        cancel_in_doubt: false,
        reset: ResetNeed::Nothing,
        retire: None,
    };
    assert!(matches!(next_step(&naive), Step::ReturnToPool(_)));
}
