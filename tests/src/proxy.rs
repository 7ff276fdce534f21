//! A TCP proxy that refuses WebSocket upgrades and passes everything else, as some hospital and
//! corporate proxies do.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy; stops on drop.
pub struct NoWebSocketProxy {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    task: JoinHandle<()>,
}

impl Drop for NoWebSocketProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NoWebSocketProxy {
    /// Proxies to `upstream` (`127.0.0.1:<port>`).
    pub async fn start(upstream: &str) -> anyhow::Result<NoWebSocketProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(pass(client, upstream.clone()));
            }
        });
        Ok(NoWebSocketProxy { base, task })
    }
}

async fn pass(mut client: TcpStream, upstream: String) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    if String::from_utf8_lossy(&head)
        .to_ascii_lowercase()
        .contains("upgrade: websocket")
    {
        let _ = client
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    if server.write_all(&head).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}
