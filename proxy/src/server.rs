//! Accepting connections: HTTP/1.1 only, bounded heads, bounded connection count.
//!
//! Background: the limits that protect the proxy from its own workspace are set
//! here, on hyper's connection builder, before any request reaches
//! [`crate::proxy::Proxy`]: the whole request head must arrive within
//! `header_timeout` (slowloris), be at most `max_header_bytes` with at most
//! `max_headers` headers (431 otherwise), and hyper's strict HTTP/1 parser refuses
//! obs-fold, NUL and bare CR in header values, conflicting Content-Lengths and
//! Transfer-Encoding on HTTP/1.0 (400). A request carrying both Content-Length and
//! Transfer-Encoding is read as chunked, its Content-Length dropped and the
//! connection closed after it, and the proxy re-frames every request it sends, so
//! no framing the workspace chose reaches an upstream.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::proxy::Proxy;

/// Serves `proxy` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = proxy.config().limits.clone();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout())
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) + 8192)
        .keep_alive(true);
    if limits.max_headers != 100 {
        builder.max_headers(limits.max_headers);
    }
    let builder = Arc::new(builder);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            proxy
                .metrics
                .connections_rejected
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            proxy
                .metrics
                .connections_open
                .fetch_add(1, Ordering::Relaxed);
            let svc = {
                let proxy = proxy.clone();
                service_fn(move |req| proxy.clone().handle(req))
            };
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await
            {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            proxy
                .metrics
                .connections_open
                .fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}
