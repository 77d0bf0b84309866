//! Simple-query round trips pgmoat runs on its own behalf (health checks, parameter sync,
//! resets): the responses are consumed here and never reach a client.

use tokio::io::{AsyncRead, AsyncWriteExt};

use super::{BackendError, ServerConn};
use crate::protocol::ProtocolError;
use crate::protocol::error::ErrorFields;
use crate::protocol::frame::{MAX_LOGIN_MESSAGE, read_message};
use crate::protocol::messages::{parse_parameter_status, query};

impl ServerConn {
    /// Runs `sql` and waits for ReadyForQuery. Rows are discarded; ParameterStatus updates the
    /// tracked parameters; an ErrorResponse becomes `BackendError::Server`.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), BackendError> {
        let addr = self.addr.to_string();
        let proto = |source| BackendError::Protocol {
            addr: addr.clone(),
            source,
        };
        let mut out = bytes::BytesMut::new();
        query(&mut out, sql);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| proto(e.into()))?;
        self.stream.flush().await.map_err(|e| proto(e.into()))?;
        let mut error = None;
        loop {
            // Rows of a check query are tiny; a huge message here means something is wrong.
            let msg = read_message(&mut self.stream, &mut self.read_buf, MAX_LOGIN_MESSAGE)
                .await
                .map_err(proto)?;
            match msg.tag {
                b'S' => {
                    let (name, value) = parse_parameter_status(&msg.body).map_err(proto)?;
                    let (name, value) = (name.to_owned(), value.to_owned());
                    self.set_param(&name, &value);
                }
                b'E' => error = Some(ErrorFields::parse(&msg.body)),
                b'Z' => {
                    if msg.body.first() != Some(&b'I') {
                        return Err(proto(ProtocolError::Malformed(
                            "server left a transaction open after an internal query",
                        )));
                    }
                    return match error {
                        Some(fields) => Err(BackendError::Server { addr, fields }),
                        None => Ok(()),
                    };
                }
                _ => {}
            }
        }
    }

    /// True when the server has sent nothing since the connection went idle: no stray
    /// message (say, a FATAL before a restart) and no EOF. Never blocks.
    pub fn is_quiet(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        // One poll with a no-op waker: Ready means data or EOF, both fatal for reuse; Pending
        // means nothing arrived. No timer, no task wake-up.
        let mut probe = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::Pin::new(&mut self.stream)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }
}
