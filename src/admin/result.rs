//! A console result in the wire format: RowDescription with real type OIDs (so typed clients
//! read numbers as numbers), text-format DataRows, and the command tag.

use bytes::{BufMut, BytesMut};
use time::OffsetDateTime;

use crate::protocol::messages::{command_complete, write_message};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Text,
    Int4,
    Int8,
    Timestamptz,
}

impl Type {
    fn oid(self) -> u32 {
        match self {
            Type::Text => 25,
            Type::Int4 => 23,
            Type::Int8 => 20,
            Type::Timestamptz => 1184,
        }
    }

    fn size(self) -> i16 {
        match self {
            Type::Text => -1,
            Type::Int4 => 4,
            Type::Int8 | Type::Timestamptz => 8,
        }
    }
}

pub type Cell = Option<String>;

pub fn text(s: impl Into<String>) -> Cell {
    Some(s.into())
}

pub fn int(n: impl std::fmt::Display) -> Cell {
    Some(n.to_string())
}

/// PostgreSQL's ISO text form of a timestamptz, in UTC: `2024-05-01 13:45:00+00`.
pub fn timestamp(t: OffsetDateTime) -> Cell {
    let t = t.to_offset(time::UtcOffset::UTC);
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

pub fn system_time(t: std::time::SystemTime) -> Cell {
    timestamp(OffsetDateTime::from(t))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSet {
    columns: Vec<(&'static str, Type)>,
    rows: Vec<Vec<Cell>>,
}

impl ResultSet {
    pub fn new(columns: &[(&'static str, Type)]) -> ResultSet {
        ResultSet {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; a row of the wrong width is a bug in the SHOW that built it.
    pub fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width");
        self.rows.push(row);
    }

    pub fn columns(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.columns.iter().map(|(name, _)| *name)
    }

    pub fn rows(&self) -> &[Vec<Cell>] {
        &self.rows
    }

    /// RowDescription, one DataRow per row, CommandComplete `tag`.
    pub fn encode(&self, buf: &mut BytesMut, tag: &str) {
        write_message(buf, b'T', |b| {
            b.put_u16(self.columns.len() as u16);
            for (name, ty) in &self.columns {
                b.put_slice(name.as_bytes());
                b.put_u8(0);
                b.put_u32(0); // not from a table
                b.put_u16(0);
                b.put_u32(ty.oid());
                b.put_i16(ty.size());
                b.put_i32(-1);
                b.put_u16(0); // text format
            }
        });
        for row in &self.rows {
            write_message(buf, b'D', |b| {
                b.put_u16(row.len() as u16);
                for cell in row {
                    match cell {
                        Some(v) => {
                            b.put_u32(v.len() as u32);
                            b.put_slice(v.as_bytes());
                        }
                        None => b.put_i32(-1),
                    }
                }
            });
        }
        command_complete(buf, tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_types_nulls_and_the_tag() {
        let mut rs = ResultSet::new(&[("name", Type::Text), ("n", Type::Int8)]);
        rs.push(vec![text("a"), int(7)]);
        rs.push(vec![None, int(-1)]);
        let mut buf = BytesMut::new();
        rs.encode(&mut buf, "SHOW");

        assert_eq!(buf[0], b'T');
        let t_len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
        let t = &buf[5..1 + t_len];
        assert_eq!(&t[..2], &[0, 2]);
        assert_eq!(&t[2..7], b"name\0");
        assert_eq!(u32::from_be_bytes(t[13..17].try_into().unwrap()), 25);
        assert_eq!(&t[25..27], b"n\0");
        assert_eq!(u32::from_be_bytes(t[33..37].try_into().unwrap()), 20);

        let d1 = &buf[1 + t_len..];
        assert_eq!(d1[0], b'D');
        assert_eq!(&d1[5..7], &[0, 2]);
        assert_eq!(&d1[7..12], &[0, 0, 0, 1, b'a']);
        assert_eq!(&d1[12..17], &[0, 0, 0, 1, b'7']);
        let d1_len = u32::from_be_bytes(d1[1..5].try_into().unwrap()) as usize;
        let d2 = &d1[1 + d1_len..];
        assert_eq!(&d2[7..11], &(-1i32).to_be_bytes());
        let d2_len = u32::from_be_bytes(d2[1..5].try_into().unwrap()) as usize;
        let c = &d2[1 + d2_len..];
        assert_eq!(c, b"C\0\0\0\x09SHOW\0");
    }

    #[test]
    fn timestamps_use_postgresql_iso_form() {
        let t = OffsetDateTime::from_unix_timestamp(1_714_571_100).unwrap();
        assert_eq!(timestamp(t).unwrap(), "2024-05-01 13:45:00+00");
    }
}
