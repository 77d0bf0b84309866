//! The untagged packets a client sends before it is logged in: SSLRequest, GSSENCRequest,
//! CancelRequest and the StartupMessage. Read with exact lengths and no read-ahead, so bytes a
//! client sends after an SSLRequest go to the TLS handshake, never into a plaintext buffer
//! (the CVE-2021-23222 class of bugs).

use tokio::io::{AsyncRead, AsyncReadExt};

use super::frame::{ProtocolError, take_cstr};

/// PostgreSQL's own bound (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET: u32 = 10_000;

const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
    Startup(StartupMessage),
    /// A protocol major version other than 3.
    UnsupportedVersion {
        major: u16,
        minor: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Protocol options (`_pq_.*`) the client asked for; pgmoat supports none, and says so in
    /// NegotiateProtocolVersion.
    pub fn protocol_options(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

/// Reads one startup-phase packet, reading exactly as many bytes as it declares.
pub async fn read_startup_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<StartupPacket, ProtocolError> {
    let mut len_bytes = [0u8; 4];
    match reader.read_exact(&mut len_bytes).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed);
        }
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len_bytes);
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(ProtocolError::BadStartupLength(len));
    }
    let mut body = vec![0u8; len as usize - 4];
    reader.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Closed
        } else {
            e.into()
        }
    })?;
    parse_startup_body(&body)
}

/// Parses a startup packet body (everything after the length word).
pub fn parse_startup_body(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let Some((code, rest)) = body.split_first_chunk::<4>() else {
        return Err(ProtocolError::Malformed("startup packet too short"));
    };
    let code = u32::from_be_bytes(*code);
    match code {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE if rest.len() == 8 => Ok(StartupPacket::Cancel {
            pid: i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
            secret: i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
        }),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => Err(
            ProtocolError::Malformed("request packet with an unexpected length"),
        ),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Ok(StartupPacket::UnsupportedVersion { major, minor });
            }
            Ok(StartupPacket::Startup(StartupMessage {
                minor,
                params: parse_params(rest)?,
            }))
        }
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut params = Vec::new();
    loop {
        let name = take_cstr(&mut rest)?;
        if name.is_empty() {
            break;
        }
        let value = take_cstr(&mut rest)?;
        if params.iter().any(|(k, _): &(String, String)| k == name) {
            return Err(ProtocolError::Malformed("startup parameter given twice"));
        }
        params.push((name.to_owned(), value.to_owned()));
    }
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(
            "trailing bytes after startup parameters",
        ));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut v = ((rest.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(rest);
        v
    }

    async fn read(bytes: Vec<u8>) -> Result<StartupPacket, ProtocolError> {
        read_startup_packet(&mut &bytes[..]).await
    }

    #[tokio::test]
    async fn recognises_requests() {
        assert_eq!(
            read(packet(SSL_REQUEST_CODE, b"")).await.unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            read(packet(GSSENC_REQUEST_CODE, b"")).await.unwrap(),
            StartupPacket::GssEncRequest
        );
        let mut key = 7i32.to_be_bytes().to_vec();
        key.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            read(packet(CANCEL_REQUEST_CODE, &key)).await.unwrap(),
            StartupPacket::Cancel { pid: 7, secret: -9 }
        );
    }

    #[tokio::test]
    async fn parses_startup_parameters() {
        let p = read(packet(196608, b"user\0alice\0database\0app\0\0"))
            .await
            .unwrap();
        let StartupPacket::Startup(msg) = p else {
            panic!("not a startup message")
        };
        assert_eq!(msg.param("user"), Some("alice"));
        assert_eq!(msg.param("database"), Some("app"));
        assert_eq!(msg.minor, 0);
    }

    #[tokio::test]
    async fn refuses_bad_lengths_and_garbage() {
        assert!(matches!(
            read(vec![0, 0, 0, 2]).await,
            Err(ProtocolError::BadStartupLength(2))
        ));
        assert!(matches!(
            read(vec![0x7f, 0, 0, 0]).await,
            Err(ProtocolError::BadStartupLength(_))
        ));
        assert!(matches!(
            read(b"GET / HTTP/1.1\r\n".to_vec()).await,
            Err(ProtocolError::BadStartupLength(_))
        ));
        assert!(matches!(
            read(packet(196608, b"user\0alice")).await,
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            read(packet(196608, b"user\0a\0user\0b\0\0")).await,
            Err(ProtocolError::Malformed(_))
        ));
        // Declares 100 bytes, sends 10: the reader sees EOF, not a hang.
        let mut short = 100u32.to_be_bytes().to_vec();
        short.extend_from_slice(&[0; 6]);
        assert!(matches!(read(short).await, Err(ProtocolError::Closed)));
    }

    #[tokio::test]
    async fn reports_other_protocol_versions() {
        assert_eq!(
            read(packet(2 << 16, b"")).await.unwrap(),
            StartupPacket::UnsupportedVersion { major: 2, minor: 0 }
        );
        let StartupPacket::Startup(msg) =
            read(packet((3 << 16) | 2, b"_pq_.x\0y\0\0")).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(msg.minor, 2);
        assert_eq!(msg.protocol_options(), vec!["_pq_.x"]);
    }
}
