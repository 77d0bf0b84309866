//! Framing: the 5-byte header of a tagged message, and reading one whole message during the
//! login phase with a bound on its length (the relay streams instead; see `relay`). Walkers
//! over a buffer cut it with `cursor::frame_at`, not with `Header::parse` directly.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bound for messages pgmoat reads whole (login phase): PostgreSQL itself refuses auth
/// messages above a few kilobytes, so anything bigger is an attack or a bug.
pub const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection closed by peer")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid message length {len} for message type '{tag}'")]
    BadLength { tag: char, len: u32 },
    #[error("message of type '{tag}' is {len} bytes long, more than the {max} bytes allowed here")]
    TooLong { tag: char, len: usize, max: usize },
    /// A client's message over `max_packet_size`.
    #[error("message of type '{tag}' is {len} bytes long, more than max_packet_size ({max} bytes)")]
    OverPacketLimit { tag: char, len: usize, max: usize },
    #[error("invalid startup packet length {0}")]
    BadStartupLength(u32),
    #[error("unexpected message type '{got}' ({expected})")]
    Unexpected { got: char, expected: &'static str },
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

impl ProtocolError {
    pub fn is_closed(&self) -> bool {
        match self {
            ProtocolError::Closed => true,
            ProtocolError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// The header of a tagged message: type byte and length (which counts itself, not the tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    pub len: u32,
}

impl Header {
    pub const SIZE: usize = 5;

    /// Parses a header from the first five bytes, or `None` when fewer are available.
    #[inline]
    pub fn parse(bytes: &[u8]) -> Result<Option<Header>, ProtocolError> {
        let Some(head) = bytes.get(..Self::SIZE) else {
            return Ok(None);
        };
        let tag = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len < 4 || len > i32::MAX as u32 {
            return Err(ProtocolError::BadLength {
                tag: tag as char,
                len,
            });
        }
        Ok(Some(Header { tag, len }))
    }

    /// Refuses a client's message longer than `max_packet_size` (`max`; header included),
    /// before any of its body is read or forwarded. A `max` of 0 is no limit (the server
    /// direction, and tests).
    #[inline]
    pub fn check_packet_limit(&self, max: usize) -> Result<(), ProtocolError> {
        if max > 0 && self.total() > max {
            return Err(ProtocolError::OverPacketLimit {
                tag: self.tag as char,
                len: self.total(),
                max,
            });
        }
        Ok(())
    }

    /// Bytes of the whole message, header included.
    #[inline]
    pub fn total(&self) -> usize {
        self.len as usize + 1
    }

    pub fn body_len(&self) -> usize {
        self.len as usize - 4
    }
}

/// One whole message read during login: tag and body (header stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: BytesMut,
}

/// Reads one whole message, buffering into `buf` (which may already hold bytes read ahead).
/// Messages longer than `max` are refused before their body is read.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Message, ProtocolError> {
    loop {
        let frame = super::frame_at(buf, 0)?;
        let needed = frame.needed();
        if let Some(header) = frame.header() {
            if header.total() > max {
                return Err(ProtocolError::TooLong {
                    tag: header.tag as char,
                    len: header.total(),
                    max,
                });
            }
            if needed == 0 {
                let mut msg = buf.split_to(header.total());
                msg.advance(Header::SIZE);
                return Ok(Message {
                    tag: header.tag,
                    body: msg,
                });
            }
            buf.reserve(needed);
        } else {
            buf.reserve(1024);
        }
        if reader.read_buf(buf).await? == 0 {
            return Err(ProtocolError::Closed);
        }
    }
}

/// Reads a NUL-terminated string from the front of `body`.
pub fn take_cstr<'a>(body: &mut &'a [u8]) -> Result<&'a str, ProtocolError> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtocolError::Malformed("missing string terminator"))?;
    let s = std::str::from_utf8(&body[..end])
        .map_err(|_| ProtocolError::Malformed("string is not valid UTF-8"))?;
    *body = &body[end + 1..];
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_messages_split_across_reads() {
        let mut wire: Vec<u8> = vec![b'p', 0, 0, 0, 9];
        wire.extend_from_slice(b"hello");
        wire.extend_from_slice(&[b'X', 0, 0, 0, 4]);
        let mut reader = tokio_test_reader(wire);
        let mut buf = BytesMut::new();
        let m = read_message(&mut reader, &mut buf, 100).await.unwrap();
        assert_eq!((m.tag, &m.body[..]), (b'p', &b"hello"[..]));
        let m = read_message(&mut reader, &mut buf, 100).await.unwrap();
        assert_eq!((m.tag, m.body.len()), (b'X', 0));
        assert!(matches!(
            read_message(&mut reader, &mut buf, 100).await,
            Err(ProtocolError::Closed)
        ));
    }

    #[tokio::test]
    async fn refuses_lengths_that_lie_or_exceed_the_bound() {
        let mut buf = BytesMut::new();
        let mut r = tokio_test_reader(vec![b'p', 0, 0, 0, 3]);
        assert!(matches!(
            read_message(&mut r, &mut buf, 100).await,
            Err(ProtocolError::BadLength { .. })
        ));
        let mut buf = BytesMut::new();
        let mut r = tokio_test_reader(vec![b'p', 0x10, 0, 0, 0]);
        assert!(matches!(
            read_message(&mut r, &mut buf, 100).await,
            Err(ProtocolError::TooLong { .. })
        ));
    }

    /// A reader that hands out one byte per read, to exercise every split point.
    fn tokio_test_reader(data: Vec<u8>) -> impl AsyncRead + Unpin {
        struct OneByte(std::collections::VecDeque<u8>);
        impl AsyncRead for OneByte {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                if let Some(b) = self.0.pop_front() {
                    buf.put_slice(&[b]);
                }
                std::task::Poll::Ready(Ok(()))
            }
        }
        OneByte(data.into())
    }

    #[test]
    fn cstr_parsing() {
        let mut body: &[u8] = b"user\0alice\0";
        assert_eq!(take_cstr(&mut body).unwrap(), "user");
        assert_eq!(take_cstr(&mut body).unwrap(), "alice");
        assert!(body.is_empty());
        assert!(take_cstr(&mut &b"abc"[..]).is_err());
    }
}
