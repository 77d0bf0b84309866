//! One byte stream type for every connection pgmoat holds: plain TCP, TLS accepted from a
//! client, or TLS towards PostgreSQL. An enum rather than a trait object keeps the relay's
//! reads and writes statically dispatched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::accepted::AcceptedTls;

pub enum Stream {
    Plain(TcpStream),
    /// TLS we accepted (client side of pgmoat), over rustls' unbuffered API.
    Accepted(Box<AcceptedTls>),
    /// TLS we initiated (towards PostgreSQL).
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// What a TLS session negotiated, for logs and the admin console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    /// Subject of the peer's certificate, if it sent one.
    pub peer_subject: Option<String>,
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Accepted(s) => s.tcp(),
            Stream::Connected(s) => s.get_ref().0,
        }
    }

    /// The peer's end-entity certificate (DER), if TLS is on and the peer sent one.
    /// TLS that pgmoat accepted (a client's connection, not one towards PostgreSQL).
    pub fn is_accepted_tls(&self) -> bool {
        matches!(self, Stream::Accepted(_))
    }

    pub fn peer_certificate(&self) -> Option<&[u8]> {
        let certs = match self {
            Stream::Plain(_) => None,
            Stream::Accepted(s) => s.state().peer_certificates(),
            Stream::Connected(s) => s.get_ref().1.peer_certificates(),
        }?;
        certs.first().map(|c| c.as_ref())
    }

    pub fn tls_info(&self) -> Option<TlsInfo> {
        let (version, suite) = match self {
            Stream::Plain(_) => return None,
            Stream::Accepted(s) => {
                let c = s.state();
                (c.protocol_version(), c.negotiated_cipher_suite())
            }
            Stream::Connected(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.negotiated_cipher_suite())
            }
        };
        Some(TlsInfo {
            version: version
                .map(|v| match v {
                    rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
                    rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default(),
            cipher: suite
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            peer_subject: self
                .peer_certificate()
                .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
                .map(|(_, cert)| cert.subject().to_string()),
        })
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
