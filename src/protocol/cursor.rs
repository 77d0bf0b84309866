//! The one place where a buffer of tagged messages is cut into frames. Every walker over the
//! wire (the relay's scanner, the translator of prepared statements, the idle-batch judge,
//! the lost-transaction answerer, the login reader) asks [`frame_at`] what stands at an
//! offset, instead of reading headers itself: a whole message, one whose body has only
//! partly arrived, or a header still incomplete. Lengths are checked here once (a length
//! below 4 or above 2^31 - 1 is an error), so no walker can get them wrong.

use super::{Header, ProtocolError};

/// What stands at an offset of a buffer of tagged messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole message: its header and its body (header stripped).
    Whole { header: Header, body: &'a [u8] },
    /// A message whose header is here but whose body is not (yet) all here: `have` bytes of
    /// its `header.total()`, header included.
    Partial { header: Header, have: usize },
    /// Fewer than [`Header::SIZE`] bytes (`have`, possibly 0): the header is incomplete.
    Short { have: usize },
}

impl Frame<'_> {
    /// The header, once it has arrived.
    #[inline]
    pub fn header(&self) -> Option<Header> {
        match *self {
            Frame::Whole { header, .. } | Frame::Partial { header, .. } => Some(header),
            Frame::Short { .. } => None,
        }
    }

    /// Bytes still missing before the message is whole.
    #[inline]
    pub fn needed(&self) -> usize {
        match *self {
            Frame::Whole { .. } => 0,
            Frame::Partial { header, have } => header.total() - have,
            Frame::Short { have } => Header::SIZE - have,
        }
    }
}

/// The frame starting at `buf[pos..]`.
#[inline]
pub fn frame_at(buf: &[u8], pos: usize) -> Result<Frame<'_>, ProtocolError> {
    let rest = buf.get(pos..).unwrap_or(&[]);
    let Some(header) = Header::parse(rest)? else {
        return Ok(Frame::Short { have: rest.len() });
    };
    let total = header.total();
    Ok(match rest.get(Header::SIZE..total) {
        Some(body) => Frame::Whole { header, body },
        None => Frame::Partial {
            header,
            have: rest.len(),
        },
    })
}

/// The whole messages at the front of `buf`, in order, with their offsets; it stops at the
/// first incomplete or malformed one (see [`Frames::pos`]).
pub struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Frames<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Frames { buf, pos: 0 }
    }

    /// Where the walk stopped: the offset of the first message not yielded.
    pub fn pos(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Frames<'a> {
    /// Offset, header, body.
    type Item = (usize, Header, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match frame_at(self.buf, self.pos) {
            Ok(Frame::Whole { header, body }) => {
                let at = self.pos;
                self.pos += header.total();
                Some((at, header, body))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tagged message on the wire (the tests of every walker build their input with it).
    pub(crate) fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn every_prefix_of_a_message_is_short_partial_then_whole() {
        let wire = msg(b'Q', b"select 1\0");
        for end in 0..wire.len() {
            let frame = frame_at(&wire[..end], 0).unwrap();
            let expect = if end < Header::SIZE {
                Header::SIZE - end
            } else {
                wire.len() - end
            };
            assert_eq!(frame.needed(), expect, "at {end}");
            match frame {
                Frame::Short { have } => assert!(end < Header::SIZE && have == end),
                Frame::Partial { header, have } => {
                    assert_eq!((header.tag, have), (b'Q', end));
                }
                Frame::Whole { .. } => panic!("whole at {end}"),
            }
        }
        let Frame::Whole { header, body } = frame_at(&wire, 0).unwrap() else {
            panic!("not whole");
        };
        assert_eq!((header.tag, body), (b'Q', &b"select 1\0"[..]));
    }

    #[test]
    fn a_lying_length_is_an_error_wherever_it_stands() {
        let mut wire = msg(b'S', b"");
        wire.extend_from_slice(&[b'Q', 0, 0, 0, 3]);
        assert!(frame_at(&wire, 5).is_err());
        assert!(frame_at(&[b'Q', 0x80, 0, 0, 0], 0).is_err());
        assert_eq!(frame_at(&wire, 99).unwrap(), Frame::Short { have: 0 });
    }

    #[test]
    fn frames_yields_the_whole_messages_and_stops_at_the_first_incomplete_one() {
        let mut wire = msg(b'P', b"\0select 1\0\0\0");
        wire.extend(msg(b'S', b""));
        let complete = wire.len();
        wire.extend(&msg(b'Q', b"select 2\0")[..7]);
        let mut frames = Frames::new(&wire);
        let tags: Vec<(usize, u8)> = frames.by_ref().map(|(at, h, _)| (at, h.tag)).collect();
        assert_eq!(tags, [(0, b'P'), (complete - 5, b'S')]);
        assert_eq!(frames.pos(), complete);
    }
}
