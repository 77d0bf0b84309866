//! The metrics_addr listener: plain HTTP/1.1 with two routes, `/metrics` (OpenMetrics text)
//! and `/health` (200 while accepting clients, 503 once shutting down, for container checks).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::admission::OldestOut;
use crate::state::Shared;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// A scraper that opens a connection and sends nothing must not hold a task forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections served at once; a new one pushes out the oldest, so a probe always gets
/// in however many idle or slow connections someone holds open.
pub const MAX_CONNECTIONS: usize = 16;

/// The longest any one connection lives (requests on a kept-alive connection included): a
/// reader too slow to take a response in that time is cut off. Prometheus reconnects.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// Serves until the process ends; it keeps answering during a drain, so /health can say 503.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(metrics = %addr, "serving /metrics and /health");
    }
    let connections = Arc::new(OldestOut::default());
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let (place, pushed_out) = connections.enter(MAX_CONNECTIONS);
        if pushed_out > 0 {
            tracing::debug!(
                limit = MAX_CONNECTIONS,
                "metrics listener: closed the oldest connection to make room"
            );
        }
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&shared, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                served = tokio::time::timeout(CONNECTION_DEADLINE, served) => match served {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended with an error"),
                    Err(_) => tracing::debug!(deadline = ?CONNECTION_DEADLINE, "metrics connection cut off at its deadline"),
                },
                _ = place.pushed_out() => {}
            }
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn respond(shared: &Arc<Shared>, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n");
    }
    match path {
        "/metrics" => match super::render(shared) {
            Ok(text) => reply(StatusCode::OK, OPENMETRICS, text),
            Err(_) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "encoding metrics failed\n",
            ),
        },
        "/health" if !shared.accepting() => {
            reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "shutting down\n")
        }
        "/health" => reply(StatusCode::OK, TEXT, "ok\n"),
        _ => reply(StatusCode::NOT_FOUND, TEXT, "try /metrics or /health\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_health_follow_the_shutdown() {
        let shared = super::super::tests::shared();
        let ok = respond(&shared, &Method::GET, "/metrics");
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[CONTENT_TYPE], OPENMETRICS);
        assert_eq!(
            respond(&shared, &Method::GET, "/health").status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&shared, &Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&shared, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        shared.shutdown.cancel();
        assert_eq!(
            respond(&shared, &Method::GET, "/health").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
