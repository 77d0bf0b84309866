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
        self.simple_query_rows(sql, None).await
    }

    /// Runs a reset and forgets what it undid: the session settings pgmoat knew of, the
    /// reported parameters (back to their login values) and, when `drops_statements`, the
    /// prepared statements.
    pub(crate) async fn reset_session(
        &mut self,
        sql: &str,
        drops_statements: bool,
    ) -> Result<(), BackendError> {
        self.simple_query(sql).await?;
        self.session_settings.clear();
        if drops_statements {
            self.statements.clear();
        }
        Ok(())
    }

    /// Like [`simple_query`](Self::simple_query), collecting the text of every row's columns
    /// into `rows` (one `Vec` per row, in order, over all result sets).
    pub(crate) async fn simple_query_rows(
        &mut self,
        sql: &str,
        mut rows: Option<&mut Vec<Vec<Option<String>>>>,
    ) -> Result<(), BackendError> {
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
                b'D' => {
                    if let Some(rows) = rows.as_deref_mut() {
                        rows.push(parse_data_row(&msg.body).map_err(proto)?);
                    }
                }
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

/// The columns of a DataRow as text (`None` for NULL).
fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, ProtocolError> {
    const MALFORMED: ProtocolError = ProtocolError::Malformed("malformed DataRow");
    let count = body.get(..2).ok_or(MALFORMED)?;
    let count = u16::from_be_bytes([count[0], count[1]]) as usize;
    let mut pos = 2;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let len = body.get(pos..pos + 4).ok_or(MALFORMED)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        pos += 4;
        if len < 0 {
            columns.push(None);
            continue;
        }
        let value = body.get(pos..pos + len as usize).ok_or(MALFORMED)?;
        columns.push(Some(String::from_utf8_lossy(value).into_owned()));
        pos += len as usize;
    }
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_with_nulls() {
        let mut body = 2u16.to_be_bytes().to_vec();
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"ab");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            parse_data_row(&body).unwrap(),
            vec![Some("ab".into()), None]
        );
        assert!(parse_data_row(&body[..5]).is_err());
    }
}
