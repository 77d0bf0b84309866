//! The bodies of the coverage-guided fuzz targets in `fuzz/` (cargo-fuzz), one function per
//! target. They live in the library, not in the fuzz crate, for three reasons: they can reach
//! `pub(crate)` helpers without widening any module's API; `tests/fuzz_corpora.rs` replays the
//! committed seed corpora through exactly the same code with a plain `cargo test`, on stable
//! Rust and without libFuzzer; and when an API they drive changes (the idle classifier, the
//! SCRAM server) this one file is all that needs adapting.
//!
//! Each function takes arbitrary bytes and must never panic, except through an `assert!` whose
//! message states the property that failed. See docs/fuzzing.md.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

use crate::admin::{self as command, Command, ParseError};
use crate::auth::scram::{
    SCRAM_SHA_256, ScramError, ScramSecret, ScramServer, hmac_sha256, sha256,
};
use crate::auth::{AuthError, Secret, UserList};
use crate::config::{Config, DatabaseConfig, FileChecks, REDACTED};
use crate::protocol::Header;
use crate::protocol::error::{ErrorFields, PgError, SqlState};
use crate::protocol::frame::read_message;
use crate::protocol::startup::{
    MAX_STARTUP_PACKET, StartupPacket, parse_startup_body, read_startup_packet,
};
use crate::relay::effects::{self, Effects};
use crate::relay::idle::{IDLE_QUEUE_MAX, IdleBatch, IdleScan, classify_idle};
use crate::relay::prepared::{ClientStatements, CompletionQueue, NOOP_STATEMENT, Statement};
use crate::relay::translate::{MAX_NAMED_PARSE, Translator, answer_locally, translate};
use crate::relay::{PinBudget, TxState};

/// Polls a future once: every reader here is in memory and always ready, so anything that
/// waits on it must finish in a single poll (no runtime needed).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a future over an always-ready in-memory reader returned Pending"),
    }
}

/// An in-memory reader that hands out at most `chunk` bytes per read, to exercise split points.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

/// A chunk size from one byte: 0 is "everything at once", otherwise 1..=255 bytes.
fn chunk_size(byte: u8) -> usize {
    match byte {
        0 => usize::MAX,
        n => usize::from(n),
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + Header::SIZE);
    m.push(tag);
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

// ---------------------------------------------------------------------------------------------
// startup_packet
// ---------------------------------------------------------------------------------------------

/// `data` is a startup packet body (after the length word). Properties: what parses as a
/// StartupMessage encodes back to exactly `data` (no byte ignored or invented), request packets
/// have their exact lengths, and `read_startup_packet` over the same bytes behind a length word,
/// read in pieces, agrees with `parse_startup_body`.
pub fn startup_packet(data: &[u8]) {
    let parsed = parse_startup_body(data);
    match &parsed {
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
            assert_eq!(data.len(), 4, "a request packet parsed with extra bytes");
        }
        Ok(StartupPacket::Cancel { pid, secret }) => {
            assert_eq!(
                data.len(),
                12,
                "a CancelRequest parsed with the wrong length"
            );
            assert_eq!(&data[4..8], &pid.to_be_bytes(), "CancelRequest pid");
            assert_eq!(&data[8..12], &secret.to_be_bytes(), "CancelRequest secret");
        }
        Ok(StartupPacket::UnsupportedVersion { major, minor }) => {
            assert_ne!(*major, 3, "protocol 3 reported as unsupported");
            assert_eq!(
                &data[..4],
                &((u32::from(*major) << 16) | u32::from(*minor)).to_be_bytes(),
                "the reported version is not the one sent"
            );
        }
        Ok(StartupPacket::Startup(msg)) => {
            let mut encoded = ((3u32 << 16) | u32::from(msg.minor)).to_be_bytes().to_vec();
            let mut names = HashSet::new();
            for (name, value) in &msg.params {
                assert!(!name.is_empty(), "an empty parameter name was accepted");
                assert!(
                    names.insert(name.as_str()),
                    "a parameter was accepted twice"
                );
                assert_eq!(msg.param(name), Some(value.as_str()), "param() lookup");
                encoded.extend_from_slice(name.as_bytes());
                encoded.push(0);
                encoded.extend_from_slice(value.as_bytes());
                encoded.push(0);
            }
            encoded.push(0);
            assert_eq!(
                encoded, data,
                "a StartupMessage does not encode back to the bytes it was parsed from"
            );
            assert!(
                msg.protocol_options()
                    .iter()
                    .all(|o| o.starts_with("_pq_.") && msg.param(o).is_some()),
                "protocol_options() lists something that is not a _pq_ parameter"
            );
        }
        Err(_) => {}
    }

    // The same body behind its length word, as a client sends it, read 7 bytes at a time.
    let mut framed = ((data.len() + 4) as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(data);
    let mut reader = Chunked {
        data: &framed,
        chunk: 7,
    };
    let read = block_on(read_startup_packet(&mut reader));
    if (8..=MAX_STARTUP_PACKET as usize).contains(&framed.len()) {
        match (&read, &parsed) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "reader and parser disagree"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "reader and parser"),
            _ => panic!("reader and parser disagree: {read:?} vs {parsed:?}"),
        }
        assert!(
            reader.data.is_empty(),
            "the reader left bytes of its packet unread"
        );
    } else {
        assert!(
            read.is_err(),
            "a packet with an out-of-range length was read"
        );
    }

    // And the raw bytes as a stream, with whatever length word they start with: the reader
    // must never read past the packet it declares.
    let mut raw = Chunked {
        data,
        chunk: usize::MAX,
    };
    if block_on(read_startup_packet(&mut raw)).is_ok() {
        let declared = u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(
            data.len() - raw.data.len(),
            declared,
            "the reader did not read exactly the declared length"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// framing
// ---------------------------------------------------------------------------------------------

/// `data[0]` picks the length bound (5..=509 bytes) and the read size; the rest is the wire.
/// Properties: `Header::parse` accepts exactly lengths 4..=i32::MAX; `frame_at` agrees with it
/// at every offset (whole exactly when all is there, `needed` completes it); `read_message` returns
/// messages no longer than the bound that re-encode to a prefix of the wire, refuses a longer
/// one before reading it, buffers only a bounded amount ahead, and gives the same messages and
/// the same final error whether the wire arrives whole or in pieces.
pub fn framing(data: &[u8]) {
    let Some((&knobs, wire)) = data.split_first() else {
        return;
    };
    match Header::parse(wire) {
        Ok(None) => assert!(wire.len() < Header::SIZE, "a whole header was not parsed"),
        Ok(Some(header)) => {
            assert_eq!(header.tag, wire[0], "header tag");
            assert!(
                (4..=i32::MAX as u32).contains(&header.len),
                "a header length outside 4..=i32::MAX was accepted"
            );
            assert_eq!(
                header.total(),
                header.body_len() + Header::SIZE,
                "header sizes"
            );
        }
        Err(_) => {
            let len = u32::from_be_bytes(wire[1..5].try_into().expect("4 bytes"));
            assert!(
                !(4..=i32::MAX as u32).contains(&len),
                "a valid header length was refused"
            );
        }
    }

    // The cursor agrees with the header at every offset: whole exactly when the message is
    // all there, and `needed` is what completes it.
    for pos in 0..=wire.len() {
        let rest = &wire[pos..];
        match (crate::protocol::frame_at(wire, pos), Header::parse(rest)) {
            (Ok(crate::protocol::Frame::Short { have }), Ok(None)) => {
                assert_eq!(have, rest.len(), "short frame size");
            }
            (Ok(frame), Ok(Some(header))) => {
                assert_eq!(frame.header(), Some(header), "frame header");
                assert_eq!(
                    frame.needed(),
                    header.total().saturating_sub(rest.len()),
                    "frame needed"
                );
                if let crate::protocol::Frame::Whole { body, .. } = frame {
                    assert_eq!(body, &rest[Header::SIZE..header.total()], "frame body");
                }
            }
            (Err(_), Err(_)) => {}
            (frame, header) => panic!("cursor and header disagree: {frame:?} / {header:?}"),
        }
    }

    let max = Header::SIZE + usize::from(knobs & 0x3f) * 8;
    let chunk = [1, 3, 64, usize::MAX][usize::from(knobs >> 6)];
    let whole = read_all(wire, usize::MAX, max);
    let pieces = read_all(wire, chunk, max);
    assert_eq!(
        whole, pieces,
        "read_message depends on how the wire is split into reads"
    );
}

/// Every message `read_message` returns until it fails, and how it failed.
fn read_all(wire: &[u8], chunk: usize, max: usize) -> (Vec<(u8, Vec<u8>)>, String) {
    let mut reader = Chunked { data: wire, chunk };
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut consumed = 0;
    loop {
        let result = block_on(read_message(&mut reader, &mut buf, max));
        // Read ahead is bounded: at most the bound (or 1 KiB for a header) and what the
        // buffer's growth rounds up to.
        assert!(
            buf.len() <= 2 * max.max(Header::SIZE + 1024),
            "read_message buffered {} bytes ahead with a bound of {max}",
            buf.len()
        );
        if let Ok(msg) = &result {
            let framed = message(msg.tag, &msg.body);
            assert!(framed.len() <= max, "a message over the bound was returned");
            assert_eq!(
                &wire[consumed..consumed + framed.len()],
                &framed[..],
                "a returned message is not the bytes on the wire"
            );
            consumed += framed.len();
        }
        assert_eq!(
            wire.len() - reader.data.len(),
            consumed + buf.len(),
            "bytes read but neither returned nor buffered"
        );
        match result {
            Ok(msg) => messages.push((msg.tag, msg.body.to_vec())),
            Err(e) => return (messages, e.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// scram_server
// ---------------------------------------------------------------------------------------------

/// The fixed keys of the fuzzed user: StoredKey = H(ClientKey), as SCRAM requires.
const CLIENT_KEY: [u8; 32] = [0x42; 32];
const SERVER_KEY: [u8; 32] = [0x17; 32];
/// In a client-final-message, replaced by the nonce the server sent.
const NONCE_MARK: &[u8] = b"%NONCE%";
/// A client-final-message ending in `,p=` + this gets the correct proof for what precedes.
const PROOF_MARK: &[u8] = b"%PROOF%";

/// `data[0]` is a separator byte; the rest splits on it into the mechanism, the
/// client-first-message and the client-final-message. In the client-final-message `%NONCE%`
/// becomes the server's nonce and a trailing `,p=%PROOF%` the correct proof, so the fuzzer can
/// reach the end of the exchange. Properties: the server-first-message carries the client's
/// nonce, salt and iterations; a proof the client did not compute is never accepted; a correct
/// proof is never refused as a wrong password, and a correct final message as a real client
/// sends it (`c=` its gs2 header, `r=` the nonce, `p=` the proof) is never refused at all;
/// success returns the right server signature and ClientKey; a finished exchange takes no
/// further message.
pub fn scram_server(data: &[u8]) {
    let Some((&separator, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == separator);
    let mechanism = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let client_first = parts.next().unwrap_or_default();
    let client_final = parts.next().unwrap_or_default();

    let salt = b"fuzzsaltfuzzsalt".to_vec();
    let secret = ScramSecret::new(1, salt.clone(), sha256(&CLIENT_KEY), SERVER_KEY);
    let mut server = ScramServer::new(secret);
    let server_first = match server.handle_client_first(&mechanism, client_first) {
        Ok(reply) => {
            assert_eq!(mechanism, SCRAM_SHA_256, "another mechanism was accepted");
            reply
        }
        Err(e) => {
            if mechanism != SCRAM_SHA_256 {
                assert!(
                    matches!(e, ScramError::UnsupportedMechanism),
                    "wrong error for a bad mechanism"
                );
            }
            assert!(server.client_key().is_none(), "a failed exchange has a key");
            assert!(
                server.handle_client_final(client_final).is_err(),
                "a final message was taken after a failed first round"
            );
            return;
        }
    };

    // The client-first-message the server took: gs2 header "n,," / "y,,", then the bare part.
    assert!(
        client_first.starts_with(b"n,,") || client_first.starts_with(b"y,,"),
        "a client-first-message without a plain gs2 header was accepted"
    );
    let bare = &client_first[3..];
    let client_nonce = bare
        .split(|&b| b == b',')
        .nth(1)
        .and_then(|a| a.strip_prefix(b"r="))
        .expect("accepted client-first-message has r=");
    let server_first_text = std::str::from_utf8(&server_first).expect("server-first is UTF-8");
    let nonce = server_first_text
        .strip_prefix("r=")
        .and_then(|s| s.split(',').next())
        .expect("server-first starts with r=");
    assert!(
        nonce.as_bytes().starts_with(client_nonce) && nonce.len() > client_nonce.len(),
        "the server nonce does not extend the client's"
    );
    assert_eq!(
        server_first_text,
        format!("r={nonce},s={},i=1", BASE64.encode(&salt)),
        "server-first-message"
    );
    let mut final_msg = replace_all(client_final, NONCE_MARK, nonce.as_bytes());
    let mut computed = None;
    // Whether it is the final message a real client sends: its gs2 header echoed, the nonce,
    // the proof, and nothing else.
    let mut canonical = false;
    let mark_at = final_msg.len().checked_sub(PROOF_MARK.len() + 3);
    if let Some(at) = mark_at
        && final_msg[at..].starts_with(b",p=")
        && final_msg.ends_with(PROOF_MARK)
    {
        let echoed = format!("c={},r={nonce}", BASE64.encode(&client_first[..3]));
        canonical = final_msg[..at] == *echoed.as_bytes();
        let mut auth_message = bare.to_vec();
        auth_message.push(b',');
        auth_message.extend_from_slice(&server_first);
        auth_message.push(b',');
        auth_message.extend_from_slice(&final_msg[..at]);
        let signature = hmac_sha256(&sha256(&CLIENT_KEY), &[&auth_message]);
        let proof: Vec<u8> = CLIENT_KEY
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        final_msg.truncate(at + 3);
        final_msg.extend_from_slice(BASE64.encode(proof).as_bytes());
        computed = Some(hmac_sha256(&SERVER_KEY, &[&auth_message]));
    }

    match server.handle_client_final(&final_msg) {
        Err(e) if canonical => panic!("a correct client-final-message was refused: {e}"),
        Ok(server_final) => {
            let expected = computed
                .unwrap_or_else(|| panic!("a proof the client did not compute was accepted"));
            assert_eq!(
                server_final,
                format!("v={}", BASE64.encode(expected)).into_bytes(),
                "wrong server signature"
            );
            assert_eq!(server.client_key(), Some(CLIENT_KEY), "wrong ClientKey");
        }
        Err(ScramError::WrongPassword) => {
            assert!(computed.is_none(), "a correct proof was refused");
            assert!(server.client_key().is_none(), "a failed exchange has a key");
        }
        Err(_) => assert!(server.client_key().is_none(), "a failed exchange has a key"),
    }
    assert!(
        server.handle_client_final(&final_msg).is_err(),
        "a finished exchange took another message"
    );
    assert!(
        server
            .handle_client_first(&mechanism, client_first)
            .is_err(),
        "a finished exchange took another client-first-message"
    );
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// error_response
// ---------------------------------------------------------------------------------------------

/// `data` is an ErrorResponse / NoticeResponse body. Properties: the parsed fields written out
/// again parse to the same fields, and an error pgmoat builds from them round-trips too.
pub fn error_response(data: &[u8]) {
    let fields = ErrorFields::parse(data);
    let mut body = Vec::new();
    for (code, value) in [
        (b'S', &fields.severity),
        (b'C', &fields.code),
        (b'M', &fields.message),
    ] {
        body.push(code);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    assert_eq!(
        ErrorFields::parse(&body),
        fields,
        "fields do not round-trip"
    );

    let ours = PgError::error(SqlState::INTERNAL_ERROR, fields.message.clone())
        .with_detail(fields.severity.clone())
        .with_hint(fields.code.clone());
    let bytes = ours.to_bytes();
    let len = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes")) as usize;
    assert_eq!(len + 1, bytes.len(), "ErrorResponse length word");
    let back = ErrorFields::parse(&bytes[5..]);
    assert_eq!(back.message, fields.message, "message does not round-trip");
    assert_eq!(back.code, "XX000", "code");
}

// ---------------------------------------------------------------------------------------------
// admin_command
// ---------------------------------------------------------------------------------------------

/// `data` is a console query (lossy UTF-8). Properties: an unknown command's error quotes the
/// trimmed query; a trailing `;` changes nothing; a database argument written back quoted parses
/// to the same command.
pub fn admin_command(data: &[u8]) {
    let sql = String::from_utf8_lossy(data);
    match command::parse(&sql) {
        Ok(cmd) => {
            let _ = cmd.needs_admin();
            let with_semicolon = format!("{};", sql.trim_end());
            assert_eq!(
                command::parse(&with_semicolon),
                Ok(cmd.clone()),
                "a trailing ';' changed the command"
            );
            let (keyword, db) = match &cmd {
                Command::Pause(Some(db)) => ("PAUSE", db),
                Command::Resume(Some(db)) => ("resume", db),
                Command::Reconnect(Some(db)) => ("Reconnect", db),
                _ => return,
            };
            let quoted = format!("{keyword} \"{}\"", db.replace('"', "\"\""));
            assert_eq!(
                command::parse(&quoted),
                Ok(cmd.clone()),
                "a database name does not read back quoted"
            );
        }
        Err(ParseError::Unknown(text)) => {
            assert_eq!(text, sql.trim(), "unknown command text");
        }
        Err(ParseError::Set) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// userlist
// ---------------------------------------------------------------------------------------------

/// `data` is auth_file text (lossy UTF-8), also parsed whole as one secret. Properties: an
/// error names the origin and a line that exists; no more users than lines; a SCRAM verifier
/// written back reads back the same; an md5 secret is the hash it spells; anything else is the
/// plain text itself.
pub fn userlist(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match UserList::parse(&text, "fuzz") {
        Ok(list) => assert!(list.len() <= text.lines().count(), "more users than lines"),
        Err(AuthError::UserList { origin, line, .. }) => {
            assert_eq!(origin, "fuzz", "error origin");
            assert!(
                (1..=text.lines().count()).contains(&line),
                "error on line {line}, which does not exist"
            );
        }
        Err(e) => panic!("an auth_file parse failed with an unexpected error: {e}"),
    }
    match Secret::parse(&text) {
        Ok(Secret::Scram(secret)) => {
            let again = ScramSecret::parse(&secret.encode()).expect("an encoded verifier parses");
            assert_eq!(
                (
                    again.iterations,
                    &again.salt,
                    again.stored_key,
                    again.server_key
                ),
                (
                    secret.iterations,
                    &secret.salt,
                    secret.stored_key,
                    secret.server_key
                ),
                "a SCRAM verifier does not read back"
            );
        }
        Ok(Secret::Md5(hash)) => {
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            assert!(
                text.len() == 35 && text[3..].eq_ignore_ascii_case(&hex),
                "an md5 secret is not the hash it spells"
            );
        }
        Ok(Secret::Plain(plain)) => assert_eq!(plain, text, "a plain secret changed"),
        Err(_) => assert!(
            text.starts_with("SCRAM-SHA-256$"),
            "only a bad verifier fails"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// connstr
// ---------------------------------------------------------------------------------------------

/// `data` is a database connection string (lossy UTF-8). Property: an entry that reads written
/// back with `redacted()` reads back the same, password shown only as `***`.
pub fn connstr(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(entry) = DatabaseConfig::from_connstr(&text) else {
        return;
    };
    let shown = entry.redacted();
    let mut back = DatabaseConfig::from_connstr(&shown)
        .unwrap_or_else(|e| panic!("the redacted form {shown:?} does not read back: {e:?}"));
    if entry.password.is_some() {
        assert_eq!(back.password.as_deref(), Some(REDACTED), "password shown");
    }
    back.password = entry.password.clone();
    assert!(
        back == entry,
        "the redacted form {shown:?} reads back different"
    );
}

// ---------------------------------------------------------------------------------------------
// toml_config
// ---------------------------------------------------------------------------------------------

/// `data` is a config file (lossy UTF-8), read with file checks off: the fuzzer would otherwise
/// make the loader open whatever paths it writes (`/dev/zero` included). Properties: every
/// error names the file and a line inside it; a config that loads writes out a summary that
/// loads back to the same config (passwords aside).
pub fn toml_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let origin = Path::new("/fuzz/pgmoat.toml");
    match Config::from_toml_str_with(&text, origin, FileChecks::Skip) {
        Ok(config) => {
            let _ = config.warnings();
            let summary = config.redacted_summary();
            let mut back = Config::from_toml_str_with(&summary, origin, FileChecks::Skip)
                .unwrap_or_else(|e| panic!("the summary does not load back: {e}\n{summary}"));
            for (name, entry) in &mut back.databases {
                entry.password = config.databases.get(name).and_then(|e| e.password.clone());
            }
            assert!(
                back == config,
                "the summary loads back different:\n{summary}"
            );
        }
        Err(errors) => {
            let lines = text.lines().count().max(1);
            for error in errors.iter() {
                assert_eq!(error.origin, "/fuzz/pgmoat.toml", "error origin");
                if let Some(line) = error.line {
                    assert!(
                        (1..=lines + 1).contains(&line),
                        "error on line {line} of {lines}"
                    );
                }
                let _ = error.to_string();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// idle_classifier
// ---------------------------------------------------------------------------------------------

/// `data` is what an idle client has sent so far. Properties: a Local batch lies within the
/// buffer, is named Parses and one Sync, and is answered with a ParseComplete for each Parse
/// and ReadyForQuery; NeedMore only while more bytes could still make a local batch (so an idle
/// client's buffer stays bounded); and the verdict is stable as more bytes arrive.
pub fn idle_classifier(data: &[u8]) {
    let verdict = classify_idle(data);
    check_idle_verdict(data, verdict);
    if let IdleBatch::Local { len, parses } = verdict {
        let mut statements = ClientStatements::default();
        let mut reply = BytesMut::new();
        if answer_locally(&data[..len], &mut statements, &mut reply).is_ok() {
            let mut expected = b"1\0\0\0\x04".repeat(parses);
            expected.extend_from_slice(b"Z\0\0\0\x05I");
            assert_eq!(&reply[..], &expected[..], "local answer");
            assert!(statements.len() <= parses, "more statements than Parses");
        }
    }
    // The session's incremental scan, fed the same bytes in three reads, ends where the
    // one-shot classification does.
    let mut scan = IdleScan::default();
    let mut last = IdleBatch::NeedMore;
    for end in [data.len() / 3, 2 * data.len() / 3, data.len()] {
        if end > 0 {
            last = scan.classify(&data[..end]);
        }
    }
    if !data.is_empty() {
        assert_eq!(last, verdict, "incremental and one-shot verdicts differ");
    }
    // Fewer bytes of the same stream: a verdict reached early must hold.
    for cut in [1, data.len() / 2, data.len().saturating_sub(1)] {
        if cut == 0 || cut >= data.len() {
            continue;
        }
        match (classify_idle(&data[..cut]), verdict) {
            (IdleBatch::Local { len, parses }, v) => assert_eq!(
                v,
                IdleBatch::Local { len, parses },
                "a local batch changed when more bytes came"
            ),
            (IdleBatch::Server, v) => {
                assert_eq!(v, IdleBatch::Server, "Server became {v:?} with more bytes")
            }
            (IdleBatch::NeedMore, _) => {}
        }
    }
}

fn check_idle_verdict(data: &[u8], verdict: IdleBatch) {
    // Walk the complete named Parses at the front.
    let mut pos = 0;
    let mut parses = 0;
    while let Ok(Some(header)) = Header::parse(&data[pos..]) {
        // An empty body counts as named: malformed either way, answer_locally refuses it.
        let unnamed = header.body_len() > 0 && data.get(pos + Header::SIZE) == Some(&0);
        let within = header.total() <= MAX_NAMED_PARSE
            && pos + header.total() + Header::SIZE <= IDLE_QUEUE_MAX;
        if header.tag != b'P' || !within || unnamed {
            break;
        }
        if data.len() < pos + header.total() {
            break;
        }
        parses += 1;
        pos += header.total();
    }
    match verdict {
        IdleBatch::Local { len, parses: n } => {
            assert!(len <= data.len(), "a local batch longer than the buffer");
            assert!(n > 0, "a local batch without a Parse");
            assert_eq!(n, parses, "local batch Parse count");
            assert_eq!(len, pos + Header::SIZE, "local batch length");
            assert_eq!(
                &data[pos..len],
                b"S\0\0\0\x04",
                "a local batch must end in Sync"
            );
        }
        IdleBatch::NeedMore => {
            // An idle client's batch waits for its Sync only up to the bound: past it, the
            // classifier must say Server (which streams) rather than keep buffering.
            assert!(
                data.len() <= IDLE_QUEUE_MAX,
                "NeedMore for {} bytes: an idle client's buffer would grow without bound",
                data.len()
            );
            let tail = &data[pos..];
            if tail.len() >= Header::SIZE {
                // Only an incomplete named Parse may still be waited for.
                let header = Header::parse(tail).ok().flatten();
                assert!(
                    header.is_some_and(|h| h.tag == b'P'
                        && h.total() <= MAX_NAMED_PARSE
                        && h.total() > tail.len()),
                    "NeedMore after a message that can never be part of a local batch"
                );
            }
        }
        IdleBatch::Server => {}
    }
}

// ---------------------------------------------------------------------------------------------
// statement_renaming
// ---------------------------------------------------------------------------------------------

/// Mirrors translate.rs's bound on the messages it holds whole (Describe, Close, Query):
/// larger ones stream through unchanged.
const MAX_SMALL: usize = 64 * 1024;

/// Refuses every statement that would pin a server, as a full pool does.
struct RefuseAll;

impl PinBudget for RefuseAll {
    fn allow_pin(&mut self, _why: crate::backend::PinReasons) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Open,
    Terminated,
    Failed,
}

/// `data[0]`: bits 0-2 max_prepared_statements (0..=7), bit 3 a pool with no room for pinned
/// servers, bit 4 a fresh server (empty statement cache) at each read; `data[1]` the read size
/// (0: all at once); the rest is what the client sends. It goes through `translate` read by
/// read, as the relay does. Property: the output is every input message in order, each
/// unchanged except that a named statement's name becomes its server-side name (a named Parse
/// answered from the cache is a Close of `pgmoat_noop`, a Close is one), with nothing added
/// but the Parse of a statement the server lacks and the Close of one it evicts; a refused
/// statement (no room to pin) becomes pgmoat's refusal; and the server's statement cache stays
/// within max_prepared_statements.
pub fn statement_renaming(data: &[u8]) {
    let [knobs, read_size, wire @ ..] = data else {
        return;
    };
    let max_prepared = usize::from(knobs & 0x07);
    let refuse_pins = knobs & 0x08 != 0;
    let fresh_servers = knobs & 0x10 != 0;
    let key = [0x5a; 16];

    let mut statements = ClientStatements::with_key(key);
    let mut server = Default::default();
    let mut queue = CompletionQueue::default();
    let mut tx = TxState::default();
    let mut budget = RefuseAll;
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    let mut remaining = 0;
    let mut outcome = Outcome::Open;
    for piece in wire.chunks(chunk_size(*read_size)) {
        if fresh_servers && remaining == 0 && input.is_empty() {
            server = Default::default();
            queue = CompletionQueue::default();
        }
        input.extend_from_slice(piece);
        let mut tr = Translator {
            statements: &mut statements,
            server: &mut server,
            queue: &mut queue,
            max_prepared,
            max_packet: 0,
            pin_budget: if refuse_pins { Some(&mut budget) } else { None },
        };
        match translate(&mut input, &mut out, &mut remaining, &mut tx, &mut tr) {
            Ok(progress) if progress.terminated => {
                outcome = Outcome::Terminated;
                break;
            }
            Ok(progress) => {
                assert!(
                    input.is_empty() || progress.needed > 0,
                    "translate stopped with input left and nothing needed"
                );
                assert!(remaining == 0 || input.is_empty(), "stopped mid-stream");
                assert!(
                    server.len() <= max_prepared.max(1),
                    "the server holds {} statements, over max_prepared_statements {max_prepared}",
                    server.len()
                );
            }
            Err(_) => {
                outcome = Outcome::Failed;
                break;
            }
        }
    }
    check_renaming(wire, &out, outcome, key, refuse_pins);
}

/// What the output must hold for one input message.
enum Expect {
    /// Exactly one of these byte strings (the message as is, or pgmoat's refusal of it).
    OneOf(Vec<Vec<u8>>),
    /// A named Parse: `Close pgmoat_noop` (the server has it), or its Parse under the server
    /// name, perhaps after the Close of an evicted statement.
    NamedParse(Arc<Statement>),
    /// A renamed Bind or Describe (`bytes`, possibly a streamed prefix), perhaps after the
    /// Parse of `statement` (and before it the Close of an evicted statement).
    Renamed {
        statement: Arc<Statement>,
        bytes: Vec<u8>,
    },
    /// Nothing is sent yet (an incomplete message translate holds whole).
    Nothing,
    /// translate must fail on it.
    Error,
    /// Terminate: nothing more is sent.
    End,
}

fn check_renaming(wire: &[u8], out: &[u8], outcome: Outcome, key: [u8; 16], refuse: bool) {
    let mut model = ClientStatements::with_key(key);
    let mut o = 0;
    let mut pos = 0;
    let mut injected = 0;
    let mut renamed = 0;
    while pos < wire.len() {
        let header = match Header::parse(&wire[pos..]) {
            Ok(Some(header)) => header,
            Ok(None) => break,
            Err(_) => {
                assert_eq!(outcome, Outcome::Failed, "a bad header was passed on");
                assert_eq!(o, out.len(), "output after a bad header");
                return;
            }
        };
        let available = &wire[pos..(pos + header.total()).min(wire.len())];
        let complete = available.len() == header.total();
        let expect = expect_for(available, header, complete, &mut model, refuse);
        if o == out.len() {
            match (&expect, outcome) {
                (Expect::End, _) | (Expect::Error, _) => {}
                (_, Outcome::Failed) => panic!("translate failed on a valid message at {pos}"),
                // Not sent yet: only the last, incomplete message may be held back.
                _ if !complete => break,
                _ => panic!(
                    "input message at {pos} ({:?}) is missing from the output",
                    header.tag as char
                ),
            }
        }
        match expect {
            Expect::Error => {
                assert_eq!(outcome, Outcome::Failed, "a malformed message was accepted");
                assert_eq!(o, out.len(), "output after a malformed message");
                return;
            }
            Expect::End => {
                assert_eq!(outcome, Outcome::Terminated, "Terminate did not terminate");
                assert_eq!(o, out.len(), "output after Terminate");
                return;
            }
            Expect::Nothing => {
                assert_eq!(o, out.len(), "part of an incomplete message was sent");
            }
            Expect::OneOf(choices) => {
                let at = &out[o..];
                let Some(index) = choices.iter().position(|c| at.starts_with(c)) else {
                    panic!(
                        "input message at {pos} ({:?}) is not in the output at {o}",
                        header.tag as char
                    );
                };
                o += choices[index].len();
                if choices[index] != available {
                    // A refusal or a Close of pgmoat_noop in its place.
                    injected += choices[index].len();
                }
            }
            Expect::NamedParse(statement) => {
                let noop = close_message(NOOP_STATEMENT);
                if out[o..].starts_with(&noop) {
                    o += noop.len();
                } else {
                    if let Some(n) = evicting_close(&out[o..], &statement) {
                        o += n;
                        injected += n;
                    }
                    assert!(
                        out[o..].starts_with(&statement.parse),
                        "a named Parse at {pos} is not its server-side Parse"
                    );
                    o += statement.parse.len();
                }
                renamed += 1;
            }
            Expect::Renamed { statement, bytes } => {
                let evict = evicting_close(&out[o..], &statement).unwrap_or(0);
                if out[o + evict..].starts_with(&statement.parse) {
                    o += evict + statement.parse.len();
                    injected += evict + statement.parse.len();
                } else {
                    assert_eq!(evict, 0, "a Close injected without a Parse after it");
                }
                assert!(
                    out[o..].starts_with(&bytes),
                    "input message at {pos} ({:?}) is not in the output renamed",
                    header.tag as char
                );
                o += bytes.len();
                renamed += 1;
            }
        }
        if !complete {
            break;
        }
        pos += header.total();
    }
    assert_eq!(
        outcome,
        Outcome::Open,
        "translate stopped on input it should take"
    );
    assert_eq!(
        o,
        out.len(),
        "the output has {} bytes nothing in the input accounts for",
        out.len() - o
    );
    // The bound the checks above imply, spelled out: the input, plus what was injected (and
    // refusals), plus the longer names.
    assert!(
        out.len() <= wire.len() + injected + renamed * 64,
        "output of {} bytes for {} bytes of input",
        out.len(),
        wire.len()
    );
}

fn expect_for(
    msg: &[u8],
    header: Header,
    complete: bool,
    model: &mut ClientStatements,
    refuse: bool,
) -> Expect {
    let body = &msg[Header::SIZE..];
    let total = header.total();
    let as_is = || Expect::OneOf(vec![msg.to_vec()]);
    match header.tag {
        b'X' if complete => Expect::End,
        b'Q' if total <= MAX_SMALL && refuse && complete => {
            let found = effects::of_message(b'Q', body);
            let mut choices = vec![msg.to_vec()];
            if found.intersects(Effects::PINS) {
                choices.push(effects::refusal_query(found.pin_reasons()));
            }
            Expect::OneOf(choices)
        }
        // Too big to hold: an unnamed one streams, a named one is refused (as soon as its
        // first byte tells which).
        b'P' if total > MAX_NAMED_PARSE => match body.first() {
            Some(0) => as_is(),
            Some(_) => Expect::Error,
            None => Expect::Nothing,
        },
        b'X' | b'P' if !complete => Expect::Nothing,
        b'Q' | b'D' | b'C' if total <= MAX_SMALL && !complete => Expect::Nothing,
        b'P' if body.first() == Some(&0) => {
            let mut choices = vec![msg.to_vec()];
            let found = effects::of_message(b'P', body);
            if refuse
                && found.intersects(Effects::PINS)
                && let Some(refusal) = effects::refusal_parse(found.pin_reasons(), body)
            {
                choices.push(refusal);
            }
            Expect::OneOf(choices)
        }
        b'P' => {
            let Some((name, statement)) = Statement::from_parse(body, model.key()) else {
                return Expect::Error;
            };
            if !model.insert(name.clone(), statement) {
                return Expect::Error;
            }
            Expect::NamedParse(model.get(&name).expect("just inserted").clone())
        }
        b'D' | b'C' if total <= MAX_SMALL => {
            // A statement name: 'S', a non-empty UTF-8 name, and its terminator as last byte.
            let name = body
                .strip_prefix(b"S")
                .and_then(|n| n.strip_suffix(b"\0"))
                .filter(|n| !n.is_empty() && !n.contains(&0))
                .and_then(|n| std::str::from_utf8(n).ok());
            match (header.tag, name) {
                (b'C', Some(name)) => {
                    model.remove(name);
                    Expect::OneOf(vec![close_message(NOOP_STATEMENT)])
                }
                (b'D', Some(name)) => match model.get(name) {
                    Some(statement) => {
                        let mut renamed = b"S".to_vec();
                        renamed.extend_from_slice(statement.server_name.as_bytes());
                        renamed.push(0);
                        Expect::Renamed {
                            statement: statement.clone(),
                            bytes: message(b'D', &renamed),
                        }
                    }
                    None => as_is(),
                },
                _ => as_is(),
            }
        }
        b'B' => {
            let mut nuls = body
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == 0)
                .map(|(i, _)| i);
            let (Some(portal_end), Some(stmt_end)) = (nuls.next(), nuls.next()) else {
                return if complete {
                    Expect::Error
                } else {
                    Expect::Nothing
                };
            };
            let name = std::str::from_utf8(&body[portal_end + 1..stmt_end])
                .ok()
                .filter(|n| !n.is_empty());
            match name.and_then(|n| model.get(n)) {
                Some(statement) => {
                    let name_len = stmt_end - portal_end - 1;
                    let len = header.len as usize - name_len + statement.server_name.len();
                    let mut bytes = vec![b'B'];
                    bytes.extend_from_slice(&(len as u32).to_be_bytes());
                    bytes.extend_from_slice(&body[..=portal_end]);
                    bytes.extend_from_slice(statement.server_name.as_bytes());
                    bytes.extend_from_slice(&body[stmt_end..]);
                    Expect::Renamed {
                        statement: statement.clone(),
                        bytes,
                    }
                }
                None => as_is(),
            }
        }
        _ => as_is(),
    }
}

fn close_message(name: &str) -> Vec<u8> {
    let mut body = b"S".to_vec();
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    message(b'C', &body)
}

/// The length of a Close at the front of `out` that evicts some other server-side statement.
fn evicting_close(out: &[u8], keep: &Statement) -> Option<usize> {
    let header = Header::parse(out).ok()??;
    let msg = out.get(..header.total())?;
    let name = msg.strip_prefix(b"C")?.get(4..)?.strip_prefix(b"S")?;
    let name = name.strip_suffix(b"\0")?;
    let server_name = std::str::from_utf8(name).ok()?;
    let evictable = server_name.starts_with("pgmoat_")
        && server_name != NOOP_STATEMENT
        && server_name != &*keep.server_name;
    evictable.then_some(msg.len())
}
