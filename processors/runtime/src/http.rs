//! Every HTTP server of fleetstream (metrics and health, the API, http-ingest) is served here,
//! with the same limits ([`HttpConfig`]):
//!
//! * **connections**: at most `max_connections` open at once (further clients wait in the
//!   listen backlog) and `max_connections_per_ip` per client address (more are closed at once,
//!   so one client cannot take every slot);
//! * **slow clients**: a request's headers must arrive within `header_timeout` (hyper closes
//!   the connection otherwise; this also bounds an idle keep-alive connection), and its
//!   response headers must be ready within `request_timeout` of them (body upload and every
//!   wait included), or the answer is `408`. A long-lived response (SSE) streams on once its
//!   headers are out;
//! * **shutdown**: on cancellation, accepting stops, connections finish their request in
//!   flight, and whatever is still open after 10 s is dropped.
//!
//! HTTP/1.1 only (put TLS and HTTP/2 in a proxy in front).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;

/// How long shutdown waits for open connections.
const DRAIN: Duration = Duration::from_secs(10);

/// Open connections per client address.
#[derive(Debug, Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    fn enter(&self, ip: IpAddr, cap: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= cap {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Serves `router` on `listener` with `limits` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let timeout = limits.request_timeout;
    let router = router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(timeout, next.run(req)).await {
                Ok(r) => r,
                Err(_) => (
                    StatusCode::REQUEST_TIMEOUT,
                    axum::Json(serde_json::json!({
                        "error": "timeout",
                        "detail": format!("the request took longer than {timeout:?}")
                    })),
                )
                    .into_response(),
            }
        },
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let cap_ip = limits.max_connections_per_ip;
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip = peer.ip();
        if !per_ip.enter(ip, cap_ip) {
            tracing::debug!(%ip, "connection refused: too many from this address");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        let per_ip = per_ip.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            per_ip.leave(ip);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("HTTP connections still open after {DRAIN:?}; dropped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: HttpConfig) -> (SocketAddr, CancellationToken) {
        let router = Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move { serve(listener, router, &limits, s).await });
        (addr, stop)
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out).await;
        out
    }

    /// A client that sends half a request line and stops is disconnected after the header
    /// timeout; it never holds its slot for ever.
    #[tokio::test]
    async fn a_slow_client_is_cut_off_after_the_header_timeout() {
        let (addr, _stop) = start(HttpConfig {
            header_timeout: Duration::from_millis(300),
            ..HttpConfig::default()
        })
        .await;
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET / HT").await.expect("write");
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
            .await
            .expect("closed by the server, not by the test's limit");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(get(addr, "/").await.ends_with("ok"), "others are served");
    }

    /// A handler slower than the request timeout answers 408.
    #[tokio::test]
    async fn a_slow_request_answers_408() {
        let (addr, _stop) = start(HttpConfig {
            request_timeout: Duration::from_millis(200),
            ..HttpConfig::default()
        })
        .await;
        let r = get(addr, "/slow").await;
        assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    }

    /// One address may hold only `max_connections_per_ip` connections: the next is closed at
    /// once, and a slot frees when a connection ends.
    #[tokio::test]
    async fn connections_are_capped_per_address() {
        let (addr, _stop) = start(HttpConfig {
            max_connections_per_ip: 2,
            ..HttpConfig::default()
        })
        .await;
        let a = tokio::net::TcpStream::connect(addr).await.expect("a");
        let _b = tokio::net::TcpStream::connect(addr).await.expect("b");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get(addr, "/").await, "", "the third is closed unanswered");
        drop(a);
        let mut served = false;
        for _ in 0..50 {
            if get(addr, "/").await.ends_with("ok") {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "a freed slot serves again");
    }
}
