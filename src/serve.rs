//! Accepting connections: hyper with a timer (so that a client that sends half
//! a request and stops is dropped once the header deadline passes), a deadline
//! on reading each request body, and a cap on the connections one replica
//! holds, counted for as long as each socket lives, WebSockets included.
//!
//! Every connection is also watched, whatever its protocol: one that brings no
//! whole request within the header deadline, or whose answer does not reach
//! the client within the answer deadline (a client that reads nothing, or an
//! HTTP/2 client that opens no flow-control window), is dropped; an HTTP/2
//! connection with nothing in flight for the idle time is closed gracefully.

use std::{
    collections::BTreeMap,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, Request},
    response::Response,
};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::Instant,
};
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};
use tower_http::timeout::TimeoutBody;

use crate::metrics;

/// What a replica allows its clients' connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most; one more gets `503` at once.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and a new
    /// connection its first whole request head, whatever the protocol.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_read_timeout: Duration,
    /// How long a request may take from its head to the last byte of its
    /// answer taken by the client.
    pub answer_timeout: Duration,
    /// How long a connection may stay open with no request in flight
    /// (HTTP/1 keep-alive waits only for the header deadline).
    pub idle_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams: u32,
}

/// How often an HTTP/2 connection is pinged, and how long the answer may take
/// before the connection counts as dead.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The answer to a connection over the cap: written at once, then closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 47\r\n\r\n\
{\"detail\":\"Server busy; try again in a moment\"}";

/// Serves `app` on `listener` until `signal` completes; then stops accepting,
/// lets requests in flight finish, and returns once every connection closed.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: ConnectionLimits,
    signal: impl Future<Output = ()>,
) where
    S: Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(());
    let connections = TaskTracker::new();
    tokio::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: give some time to close.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::connection_refused();
            connections.spawn(refuse_busy(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(Instant::now()));
        let service = {
            let (app, activity) = (app.clone(), activity.clone());
            tower::service_fn(move |mut request: Request<Incoming>| {
                let answer = activity.begin();
                request.extensions_mut().insert(ConnectInfo(peer));
                let request =
                    request.map(|body| Body::new(TimeoutBody::new(limits.body_read_timeout, body)));
                let call = app.clone().oneshot(request);
                async move {
                    let response = call.await?;
                    Ok::<_, std::convert::Infallible>(response.map(|body| {
                        Body::new(Answering {
                            body,
                            _answer: answer,
                        })
                    }))
                }
            })
        };
        let io = TokioIo::new(Counted {
            stream,
            _permit: permit,
        });
        let mut stopping = stopping.clone();
        connections.spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .enable_connect_protocol()
                .max_concurrent_streams(limits.max_streams)
                .keep_alive_interval(H2_KEEP_ALIVE)
                .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
            let connection =
                builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
            tokio::pin!(connection);
            let mut closing = false;
            loop {
                let next_check = match activity.verdict(Instant::now(), &limits, closing) {
                    Verdict::Overdue(reason) => {
                        // Dropped, socket and all: nothing it holds waits on the client.
                        metrics::connection_dropped(reason);
                        return;
                    }
                    Verdict::Idle => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        continue;
                    }
                    Verdict::CheckAt(at) => at,
                };
                tokio::select! {
                    _ = connection.as_mut() => return,
                    _ = stopping.changed(), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    () = tokio::time::sleep_until(next_check) => {}
                }
            }
        });
    }
    drop(listener);
    drop(stop);
    connections.close();
    connections.wait().await;
}

/// Tells a client over the cap that the server is busy, without reading its
/// request (it holds a descriptor, so it must not wait long).
async fn refuse_busy(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
    let _ = stream.shutdown().await;
}

/// What one connection is doing: requests begun, answers not yet taken by
/// the client, and since when nothing has been in flight. Shared by the
/// connection's task, which acts on it, and its requests.
struct Activity(Mutex<Answers>);

struct Answers {
    /// Requests whose head arrived, ever.
    begun: u64,
    /// When each answer not yet finished began, in the order they began.
    open: BTreeMap<u64, Instant>,
    /// When the last answer finished, or the connection was accepted.
    quiet_since: Instant,
}

/// What a connection's watch decides.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Drop it now (the reason is the metric label).
    Overdue(&'static str),
    /// Nothing in flight for the idle time: close it gracefully.
    Idle,
    /// Fine: look again then.
    CheckAt(Instant),
}

impl Activity {
    fn new(accepted: Instant) -> Self {
        Self(Mutex::new(Answers {
            begun: 0,
            open: BTreeMap::new(),
            quiet_since: accepted,
        }))
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request's head arrived: its answer is in flight until the guard goes.
    fn begin(self: &Arc<Self>) -> AnswerGuard {
        let mut answers = self.answers();
        let id = answers.begun;
        answers.begun += 1;
        answers.open.insert(id, Instant::now());
        AnswerGuard {
            activity: self.clone(),
            id,
        }
    }

    fn verdict(&self, now: Instant, limits: &ConnectionLimits, closing: bool) -> Verdict {
        let answers = self.answers();
        let (due, overdue) = if answers.begun == 0 {
            (
                answers.quiet_since + limits.header_read_timeout,
                Verdict::Overdue("no_request"),
            )
        } else if let Some((_, &oldest)) = answers.open.first_key_value() {
            (
                oldest + limits.answer_timeout,
                Verdict::Overdue("answer_unread"),
            )
        } else if closing {
            // Closing gracefully already: an upgraded stream may still run.
            (
                now + limits.answer_timeout,
                Verdict::CheckAt(now + limits.answer_timeout),
            )
        } else {
            (answers.quiet_since + limits.idle_timeout, Verdict::Idle)
        };
        if now >= due {
            overdue
        } else {
            Verdict::CheckAt(due)
        }
    }
}

/// An answer in flight; finished when dropped.
struct AnswerGuard {
    activity: Arc<Activity>,
    id: u64,
}

impl Drop for AnswerGuard {
    fn drop(&mut self) {
        let mut answers = self.activity.answers();
        answers.open.remove(&self.id);
        if answers.open.is_empty() {
            answers.quiet_since = Instant::now();
        }
    }
}

/// A response body that keeps its answer in flight until hyper has written
/// it all (or given up) and drops it.
struct Answering {
    body: Body,
    _answer: AnswerGuard,
}

impl http_body::Body for Answering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client's socket and its place under the connection cap, given back when
/// the socket closes: after the response, or after the WebSocket it became.
struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            answer_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            max_streams: 8,
        }
    }

    #[test]
    fn a_connection_is_watched_from_accept_to_its_last_answer() {
        let (limits, start) = (limits(), Instant::now());
        let s = Duration::from_secs;
        let activity = Arc::new(Activity::new(start));
        // Nothing yet: the first request is due with the header deadline.
        assert_eq!(
            activity.verdict(start, &limits, false),
            Verdict::CheckAt(start + s(10))
        );
        assert_eq!(
            activity.verdict(start + s(10), &limits, false),
            Verdict::Overdue("no_request")
        );
        // An answer in flight is due with the answer deadline, the oldest first.
        let first = activity.begin();
        let second = activity.begin();
        let began = activity.answers().open[&0];
        assert_eq!(
            activity.verdict(began, &limits, false),
            Verdict::CheckAt(began + s(60))
        );
        drop(first);
        let later = activity.answers().open[&1];
        assert_eq!(
            activity.verdict(later + s(60), &limits, false),
            Verdict::Overdue("answer_unread")
        );
        // Nothing in flight: idle after the idle time, unless closing already.
        drop(second);
        let quiet = activity.answers().quiet_since;
        assert_eq!(
            activity.verdict(quiet, &limits, false),
            Verdict::CheckAt(quiet + s(90))
        );
        assert_eq!(
            activity.verdict(quiet + s(90), &limits, false),
            Verdict::Idle
        );
        assert!(matches!(
            activity.verdict(quiet + s(90), &limits, true),
            Verdict::CheckAt(_)
        ));
    }

    #[test]
    fn the_busy_answer_declares_its_length() {
        let text = std::str::from_utf8(super::BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
