//! A tiny HTTP server in the test process that answers every request with one fixed body, and
//! counts the requests: an identity provider's key set, a web page on another origin.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Serves one body on 127.0.0.1 until dropped.
pub struct StaticServer {
    /// `http://127.0.0.1:<port>` (its origin).
    pub origin: String,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StaticServer {
    /// Answers every request with `body` as `content_type`.
    pub async fn start(content_type: &str, body: String) -> anyhow::Result<StaticServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let origin = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let response = Arc::new(format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ));
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(StaticServer {
            origin,
            requests,
            task,
        })
    }

    /// How many requests it answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}
