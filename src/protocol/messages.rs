//! Writers for the backend messages pgmoat sends itself (postgres-protocol only writes the
//! frontend side), and parsers for the few frontend messages it must read during login.

use bytes::{BufMut, BytesMut};

use super::frame::{ProtocolError, take_cstr};

/// Writes a tagged message whose body `body` appends.
#[inline]
pub fn write_message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_u32(0);
    body(buf);
    let len = (buf.len() - start - 1) as u32;
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

pub fn authentication_ok(buf: &mut BytesMut) {
    write_message(buf, b'R', |b| b.put_u32(0));
}

pub fn authentication_cleartext(buf: &mut BytesMut) {
    write_message(buf, b'R', |b| b.put_u32(3));
}

pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    write_message(buf, b'R', |b| {
        b.put_u32(5);
        b.put_slice(&salt);
    });
}

pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    write_message(buf, b'R', |b| {
        b.put_u32(10);
        for m in mechanisms {
            b.put_slice(m.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
    });
}

pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    write_message(buf, b'R', |b| {
        b.put_u32(11);
        b.put_slice(data);
    });
}

pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    write_message(buf, b'R', |b| {
        b.put_u32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    write_message(buf, b'S', |b| {
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_slice(value.as_bytes());
        b.put_u8(0);
    });
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    write_message(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    write_message(buf, b'Z', |b| b.put_u8(status));
}

/// NegotiateProtocolVersion: the newest version pgmoat speaks (PostgreSQL sends the whole
/// version code, major << 16 | minor, and libpq compares it so) and the protocol options it
/// does not understand.
pub fn negotiate_protocol_version(buf: &mut BytesMut, newest_version: u32, unsupported: &[&str]) {
    write_message(buf, b'v', |b| {
        b.put_u32(newest_version);
        b.put_u32(unsupported.len() as u32);
        for opt in unsupported {
            b.put_slice(opt.as_bytes());
            b.put_u8(0);
        }
    });
}

pub fn query(buf: &mut BytesMut, sql: &str) {
    write_message(buf, b'Q', |b| {
        b.put_slice(sql.as_bytes());
        b.put_u8(0);
    });
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    write_message(buf, b'C', |b| {
        b.put_slice(tag.as_bytes());
        b.put_u8(0);
    });
}

/// SASLInitialResponse ('p' during SASL): the mechanism and the client-first-message.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let mut rest = body;
    let mechanism = take_cstr(&mut rest)?;
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(ProtocolError::Malformed("SASLInitialResponse too short"))?;
    let len = i32::from_be_bytes(len_bytes);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(ProtocolError::Malformed(
            "SASLInitialResponse length does not match its data",
        ));
    }
    Ok((mechanism, data))
}

/// PasswordMessage ('p' for cleartext or md5): the NUL-terminated password.
pub fn parse_password_message(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut rest = body;
    let password = take_cstr(&mut rest)?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(
            "trailing bytes after the password",
        ));
    }
    Ok(password)
}

/// ParameterStatus body: name and value.
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let mut rest = body;
    let name = take_cstr(&mut rest)?;
    let value = take_cstr(&mut rest)?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_count_themselves() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, b'I');
        assert_eq!(&buf[..], &[b'Z', 0, 0, 0, 5, b'I']);
        buf.clear();
        parameter_status(&mut buf, "a", "b");
        assert_eq!(&buf[..], b"S\0\0\0\x08a\0b\0");
        let (n, v) = parse_parameter_status(&buf[5..]).unwrap();
        assert_eq!((n, v), ("a", "b"));
    }

    #[test]
    fn sasl_initial_response_parsing() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        assert_eq!(
            parse_sasl_initial_response(&body).unwrap(),
            ("SCRAM-SHA-256", &b"abc"[..])
        );
        body.push(b'x');
        assert!(parse_sasl_initial_response(&body).is_err());
        assert!(parse_sasl_initial_response(b"SCRAM\0\0\0").is_err());
    }
}
