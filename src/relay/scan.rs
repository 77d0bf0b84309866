//! Scanning a byte stream for message boundaries without copying or decoding it. Each
//! direction keeps a `Scanner`: bodies are passed through as they arrive (a 100 MB DataRow
//! never sits whole in memory), and only the few small messages a pooler must read are
//! held until complete and shown to the caller.

use crate::protocol::{Frame, ProtocolError, frame_at};

/// Small messages are inspected whole only up to this size; a bigger one of an inspected
/// type is streamed like any other (nothing pgmoat inspects is legitimately that large).
pub const INSPECT_MAX: usize = 64 * 1024;

#[derive(Debug, Default, Clone)]
pub struct Scanner {
    /// Bytes of the current message still to pass through.
    remaining: usize,
    /// Longest message allowed (max_packet_size, client direction); 0: no limit.
    limit: usize,
}

/// What a scan step saw.
pub enum Seen<'a> {
    /// A complete message of an inspected type: tag and body.
    Whole(u8, &'a [u8]),
    /// The header of a message that is passed through unseen.
    Streamed(u8),
}

impl Scanner {
    /// A scanner that refuses any message longer than `limit` bytes (header included).
    pub fn with_limit(limit: usize) -> Self {
        Scanner {
            remaining: 0,
            limit,
        }
    }

    /// The longest message allowed; 0: no limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// True between messages (not inside a message being streamed through).
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Scans `buf[from..]`. `inspect(tag)` says which message types must be seen whole;
    /// `on_message` is called for every message start, and may stop the scan by returning
    /// `false` (the message is then left unconsumed at the returned offset); it gets the
    /// message's offset in `buf`. Returns the
    /// offset up to which bytes may be forwarded; bytes after it are an incomplete header or
    /// an incomplete inspected message, kept for the next read.
    #[inline]
    pub fn scan(
        &mut self,
        buf: &[u8],
        from: usize,
        inspect: impl Fn(u8) -> bool,
        mut on_message: impl FnMut(Seen<'_>, usize) -> bool,
    ) -> Result<ScanResult, ProtocolError> {
        let mut pos = from;
        let len = buf.len();
        while pos < len {
            if self.remaining > 0 {
                let take = self.remaining.min(len - pos);
                pos += take;
                self.remaining -= take;
                continue;
            }
            let frame = frame_at(buf, pos)?;
            let Some(header) = frame.header() else {
                return Ok(ScanResult {
                    forward_to: pos,
                    needed: frame.needed(),
                    stopped: false,
                });
            };
            header.check_packet_limit(self.limit)?;
            let total = header.total();
            if inspect(header.tag) && total <= INSPECT_MAX {
                let Frame::Whole { body, .. } = frame else {
                    return Ok(ScanResult {
                        forward_to: pos,
                        needed: frame.needed(),
                        stopped: false,
                    });
                };
                if !on_message(Seen::Whole(header.tag, body), pos) {
                    return Ok(ScanResult {
                        forward_to: pos,
                        needed: 0,
                        stopped: true,
                    });
                }
                pos += total;
            } else {
                if !on_message(Seen::Streamed(header.tag), pos) {
                    return Ok(ScanResult {
                        forward_to: pos,
                        needed: 0,
                        stopped: true,
                    });
                }
                let take = total.min(len - pos);
                pos += take;
                self.remaining = total - take;
            }
        }
        Ok(ScanResult {
            forward_to: pos,
            needed: 0,
            stopped: false,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanResult {
    /// Bytes before this offset are complete or streamed-through and may be forwarded.
    pub forward_to: usize,
    /// How many more bytes are needed to make progress on the message at `forward_to`.
    pub needed: usize,
    /// The callback stopped the scan at `forward_to`.
    pub stopped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::cursor::tests::msg;
    use proptest::prelude::*;

    /// Feeds `wire` in the given chunk sizes, forwarding as the relay does, and returns the
    /// forwarded bytes and the inspected messages.
    /// Forwarded bytes, inspected messages, and the tag of every message.
    type Run = (Vec<u8>, Vec<(u8, Vec<u8>)>, Vec<u8>);

    fn run(wire: &[u8], chunks: &[usize]) -> Run {
        let mut scanner = Scanner::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut forwarded = Vec::new();
        let mut seen = Vec::new();
        let mut tags = Vec::new();
        let mut offset = 0;
        let mut chunk_iter = chunks.iter().cycle();
        while offset < wire.len() {
            let n = (*chunk_iter.next().unwrap())
                .max(1)
                .min(wire.len() - offset);
            buf.extend_from_slice(&wire[offset..offset + n]);
            offset += n;
            let r = scanner
                .scan(
                    &buf,
                    0,
                    |t| t == b'Z' || t == b'S',
                    |s, _| {
                        match s {
                            Seen::Whole(t, b) => {
                                seen.push((t, b.to_vec()));
                                tags.push(t);
                            }
                            Seen::Streamed(t) => tags.push(t),
                        }
                        true
                    },
                )
                .unwrap();
            forwarded.extend_from_slice(&buf[..r.forward_to]);
            buf.drain(..r.forward_to);
        }
        (forwarded, seen, tags)
    }

    #[test]
    fn streams_big_messages_and_inspects_small_ones() {
        let mut wire = msg(b'D', &vec![7u8; 100_000]);
        wire.extend(msg(b'S', b"TimeZone\0UTC\0"));
        wire.extend(msg(b'Z', b"I"));
        let (fwd, seen, tags) = run(&wire, &[4096]);
        assert_eq!(fwd, wire);
        assert_eq!(tags, vec![b'D', b'S', b'Z']);
        assert_eq!(
            seen,
            vec![(b'S', b"TimeZone\0UTC\0".to_vec()), (b'Z', b"I".to_vec())]
        );
    }

    #[test]
    fn a_lying_length_is_an_error() {
        let mut s = Scanner::default();
        let r = s.scan(&[b'Q', 0, 0, 0, 2], 0, |_| false, |_, _| true);
        assert!(r.is_err());
    }

    #[test]
    fn stopping_leaves_the_message_unconsumed() {
        let mut wire = msg(b'Q', b"select 1\0");
        wire.extend(msg(b'X', b""));
        let mut s = Scanner::default();
        let r = s
            .scan(
                &wire,
                0,
                |t| t == b'X',
                |seen, _| !matches!(seen, Seen::Whole(b'X', _)),
            )
            .unwrap();
        assert_eq!(r.forward_to, 14);
        assert!(r.stopped);
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_frames(
            bodies in proptest::collection::vec((prop_oneof![Just(b'D'), Just(b'S'), Just(b'Z'), Just(b'C')], proptest::collection::vec(any::<u8>(), 0..300)), 1..20),
            chunks in proptest::collection::vec(1usize..64, 1..10),
        ) {
            let mut wire = Vec::new();
            for (t, b) in &bodies {
                wire.extend(msg(*t, b));
            }
            let (fwd, seen, tags) = run(&wire, &chunks);
            prop_assert_eq!(fwd, wire);
            prop_assert_eq!(tags, bodies.iter().map(|(t, _)| *t).collect::<Vec<_>>());
            let expect: Vec<(u8, Vec<u8>)> = bodies.iter().filter(|(t, _)| *t == b'S' || *t == b'Z').cloned().collect();
            prop_assert_eq!(seen, expect);
        }
    }
}
