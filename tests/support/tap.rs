//! A TCP forwarder between pgmoat and PostgreSQL that records how every connection began,
//! so a test can see what pgmoat sends in the clear (an SSLRequest, or a plaintext startup or
//! CancelRequest) without decrypting anything.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// The request code in the first 8 bytes of an SSLRequest.
pub const SSL_REQUEST_CODE: u32 = 80877103;
/// The request code of a CancelRequest.
pub const CANCEL_REQUEST_CODE: u32 = 80877102;

pub struct TcpTap {
    port: u16,
    firsts: Arc<Mutex<Vec<u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpTap {
    /// Listens on 127.0.0.1 at a free port and forwards each connection to `target_port`.
    pub async fn start(target_port: u16) -> TcpTap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let firsts = Arc::new(Mutex::new(Vec::new()));
        let seen = firsts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(forward(client, target_port, seen));
            }
        });
        TcpTap { port, firsts, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The second 32-bit word of each connection's first 8 bytes (the request code of an
    /// SSLRequest or CancelRequest, the protocol version of a startup packet), in order.
    pub fn first_codes(&self) -> Vec<u32> {
        self.firsts.lock().unwrap().clone()
    }
}

impl Drop for TcpTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(mut client: TcpStream, target_port: u16, seen: Arc<Mutex<Vec<u32>>>) {
    let Ok(mut server) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], target_port))).await
    else {
        return;
    };
    let mut head = [0u8; 8];
    if client.read_exact(&mut head).await.is_err() {
        return;
    }
    seen.lock()
        .unwrap()
        .push(u32::from_be_bytes(head[4..8].try_into().unwrap()));
    if tokio::io::AsyncWriteExt::write_all(&mut server, &head)
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
