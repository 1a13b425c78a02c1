//! The HTTPS admission server; the plain-HTTP admin server (health, readiness, metrics) is
//! `wif-runtime`'s, re-exported here.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, State},
    http::{Request, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulConnection},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, oneshot},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::timeout::TimeoutLayer;

pub use wif_runtime::{
    admin::{Readiness, router as admin_router, serve as serve_plain},
    bind,
};

use crate::{
    admission::{AdmissionState, ReviewError, handle},
    metrics::{ConnMetrics, Handshake, Protocol},
    tls::CertStore,
};

/// Limits of the admission listener. Every one bounds memory or time a client can hold; the
/// README's "Limits" table explains each default.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to read request headers (HTTP/1.1; also how long an idle keep-alive
    /// connection may wait for its next request).
    pub header_timeout: Duration,
    /// Time allowed for a whole request.
    pub request_timeout: Duration,
    /// Time given to in-flight requests on shutdown.
    pub drain_timeout: Duration,
    /// Offer HTTP/2 in ALPN (`h2`, then `http/1.1`); when false only `http/1.1` is offered.
    pub http2: bool,
    /// HTTP/2: streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: largest header block accepted, bytes (SETTINGS_MAX_HEADER_LIST_SIZE).
    pub h2_max_header_list_bytes: u32,
    /// HTTP/2: interval of keep-alive PINGs; a peer that does not answer within
    /// `h2_keep_alive_timeout` is disconnected.
    pub h2_keep_alive_interval: Duration,
    /// HTTP/2: time allowed for a PING's answer.
    pub h2_keep_alive_timeout: Duration,
    /// A connection (HTTP/2) with no request in flight for this long is closed with GOAWAY.
    pub idle_timeout: Duration,
    /// Admission requests handled at once, over all connections; more wait for a slot.
    pub max_in_flight: usize,
    /// How long a request may wait for a slot before it is shed with 429 and `Retry-After`.
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // The API server caps objects at ~1.5 MiB; a review adds little around the pod.
            max_body_bytes: 3 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(25),
            http2: true,
            // Go's HTTP/2 server default; the API server opens another connection beyond it.
            h2_max_concurrent_streams: 250,
            // A review's headers are a few hundred bytes.
            h2_max_header_list_bytes: 16 * 1024,
            h2_keep_alive_interval: Duration::from_secs(30),
            h2_keep_alive_timeout: Duration::from_secs(10),
            // Below the API server's idle-connection timeout (90 s), so the webhook ends idle
            // connections with a GOAWAY rather than the API server finding them dead.
            idle_timeout: Duration::from_secs(60),
            // Two cores answer a review in ~50 µs; 256 at once saturate them many times over.
            max_in_flight: 256,
            // Well inside the API server's webhook timeout (10 s by default), which then retries
            // the 429 after `Retry-After`.
            queue_timeout: Duration::from_secs(2),
        }
    }
}

/// HTTP/2 flow-control windows: a connection holds at most this much unread request data.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The admission router: `POST /mutate-v1-pod` plus any extra routes (the validating endpoint).
pub fn admission_router(state: AdmissionState, limits: &Limits) -> Router {
    let max = limits.max_body_bytes;
    Router::new()
        .route(
            wif_api::MUTATE_PATH,
            post(
                move |State(state): State<AdmissionState>, req: Request<Body>| async move {
                    match axum::body::to_bytes(req.into_body(), max).await {
                        Ok(body) => handle(&state, body).await,
                        Err(_) => {
                            state.metrics.observe(crate::metrics::Outcome::Invalid, 0.0);
                            ReviewError::TooLarge(max).into_response()
                        }
                    }
                },
            ),
        )
        .route("/healthz", get(|| async { "ok" }))
        // The limit is enforced by `to_bytes`, which answers 400 rather than axum's 413.
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .with_state(state)
}

/// At most `max` admission requests handled at once, as many again waiting for a slot.
struct Shedder {
    slots: Arc<Semaphore>,
    max: usize,
    /// Requests waiting for a slot now; at `max` (as many as there are slots) more are shed at
    /// once, so a burst costs a few bytes per extra stream rather than a waiting task each.
    waiting: AtomicUsize,
    queue_timeout: Duration,
    metrics: Arc<ConnMetrics>,
}

/// A request's slot; the in-flight gauge counts it until dropped.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<ConnMetrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

impl Shedder {
    fn new(limits: &Limits, metrics: Arc<ConnMetrics>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_in_flight)),
            max: limits.max_in_flight,
            waiting: AtomicUsize::new(0),
            queue_timeout: limits.queue_timeout,
            metrics,
        }
    }

    /// A slot for one request, or the 429 answer when none frees up in time. A waiting request
    /// has not read its body, so waiting costs no more than HTTP/2's flow-control window.
    async fn admit(&self) -> Result<Slot, Response> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max => {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                None
            }
            Err(_) => {
                let permit =
                    tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                permit.ok().and_then(Result::ok)
            }
        };
        let Some(permit) = permit else {
            self.metrics.shed.inc();
            tracing::debug!(max_in_flight = self.max, queue_timeout = ?self.queue_timeout, "overloaded: admission request shed");
            return Err(overloaded(self.max, self.queue_timeout));
        };
        self.metrics.in_flight.inc();
        Ok(Slot {
            _permit: permit,
            metrics: self.metrics.clone(),
        })
    }
}

/// The answer to a shed request: a `Status` the API server's client reads as the error.
pub fn overloaded(max: usize, waited: Duration) -> Response {
    let message = format!(
        "wif webhook overloaded: {max} admission requests already in flight and no slot freed \
         within {waited:?}; retry"
    );
    let status = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "message": message,
        "reason": "TooManyRequests",
        "code": 429,
    });
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, "1")],
        axum::Json(status),
    )
        .into_response()
}

/// Serves `router` over TLS on `listener` until `stop`, then stops accepting and waits up to
/// `limits.drain_timeout` for in-flight requests. Connection metrics are not registered.
///
/// At most `limits.max_in_flight` requests are handled at once and as many again wait for a
/// slot. A request that finds the queue full, or no slot within `limits.queue_timeout`, is
/// answered with 429, a `Retry-After` and a Kubernetes `Status` saying the webhook is
/// overloaded: the API server's client retries it after that delay, and if it still cannot get
/// through the user reads that message instead of a timeout. The check runs in the connection's
/// own service, before routing: a middleware layer cost a few microseconds per review.
pub async fn serve_tls(
    listener: TcpListener,
    certs: Arc<CertStore>,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    serve_tls_metered(listener, certs, router, limits, Arc::default(), stop).await;
}

/// Requests in flight on one connection and when the last one ended, for the idle timeout.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    last: std::sync::Mutex<Option<Instant>>,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }

    /// When the connection last became idle (`opened` if it never had a request); `None` while
    /// a request is in flight.
    fn idle_since(&self, opened: Instant) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            self.last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .unwrap_or(opened),
        )
    }
}

struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        *self
            .0
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// [`serve_tls`] updating `metrics`: open connections and TLS handshakes, by negotiated protocol.
pub async fn serve_tls_metered(
    listener: TcpListener,
    certs: Arc<CertStore>,
    router: Router,
    limits: Limits,
    metrics: Arc<ConnMetrics>,
    stop: CancellationToken,
) {
    let conn = Arc::new(Conn {
        acceptor: TlsAcceptor::from(certs.server_config(limits.http2)),
        router,
        builders: Builders::new(&limits),
        shedder: Arc::new(Shedder::new(&limits, metrics.clone())),
        metrics,
        stop: stop.clone(),
        handshake_timeout: limits.handshake_timeout,
        idle_timeout: limits.idle_timeout,
    });
    // Each connection task holds a receiver; `closed()` resolves when the last one has ended.
    let (drained, connections) = tokio::sync::watch::channel(());
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // EMFILE and friends: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (conn, connection) = (conn.clone(), connections.clone());
        tokio::spawn(async move {
            let _connection = connection;
            conn.serve(tcp, peer).await;
        });
    }
    drop(listener);
    drop(connections);
    tracing::info!(
        connections = drained.receiver_count(),
        "draining in-flight requests"
    );
    if tokio::time::timeout(limits.drain_timeout, drained.closed())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

/// What every connection of [`serve_tls_metered`] is served with.
struct Conn {
    acceptor: TlsAcceptor,
    router: Router,
    builders: Builders,
    shedder: Arc<Shedder>,
    metrics: Arc<ConnMetrics>,
    stop: CancellationToken,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

impl Conn {
    /// One connection: the TLS handshake, then HTTP (by ALPN) until it ends, the server stops
    /// or it has been idle for `idle_timeout`.
    async fn serve(&self, tcp: TcpStream, peer: SocketAddr) {
        let Some(tls) = self.handshake(tcp, peer).await else {
            return;
        };
        let protocol = match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::H2,
            Some(_) => Protocol::Http1,
            None => Protocol::NoAlpn,
        };
        let open = self.metrics.open(protocol);
        let activity = Arc::new(Activity::default());
        let service = {
            let activity = activity.clone();
            let router = self.router.clone();
            let shedder = self.shedder.clone();
            // HTTP/1.1 after stop: every response ends its connection (see `drive`).
            let stop = (protocol != Protocol::H2).then(|| self.stop.clone());
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let guard = activity.begin();
                let call = router.clone().oneshot(req.map(Body::new));
                let (stop, shedder) = (stop.clone(), shedder.clone());
                async move {
                    let mut response = match shedder.admit().await {
                        Ok(slot) => {
                            let response = call.await;
                            drop(slot);
                            response
                        }
                        Err(overloaded) => Ok(overloaded),
                    };
                    if stop.is_some_and(|s| s.is_cancelled())
                        && let Ok(response) = response.as_mut()
                    {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                    }
                    drop(guard);
                    response
                }
            })
        };
        let builder = match protocol {
            Protocol::H2 => &self.builders.h2,
            Protocol::Http1 => &self.builders.h1,
            Protocol::NoAlpn => &self.builders.sniff,
        };
        let (io, returned) = Returned::new(tls);
        self.drive(
            builder.serve_connection(TokioIo::new(io), service),
            &activity,
            peer,
            protocol,
        )
        .await;
        drop(open);
        // hyper has dropped the stream by now, handing it back.
        if let Ok(tls) = returned.await {
            linger(tls).await;
        }
    }

    /// Polls the HTTP connection until it ends; after `idle_timeout` without a request, asks it
    /// to end gracefully. On stop, HTTP/2 ends at once with GOAWAY (the client retries what we
    /// did not take). HTTP/1.1 has no such signal: a connection closed while idle can meet a
    /// request the client is writing, which the client (the API server) cannot retry and
    /// reports as "EOF". So an HTTP/1.1 connection stays open after stop, each response says
    /// `Connection: close` (hyper then closes after it), and only one that stayed quiet for
    /// [`STOP_IDLE_GRACE`] is closed by us.
    async fn drive<C>(&self, conn: C, activity: &Activity, peer: SocketAddr, protocol: Protocol)
    where
        C: GracefulConnection,
        C::Error: std::fmt::Display,
    {
        let mut conn = std::pin::pin!(conn);
        let opened = Instant::now();
        let (mut closing, mut stopped_at) = (false, None);
        let mut idle_limit = self.idle_timeout;
        let mut tick = tokio::time::interval((idle_limit / 4).max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                    return;
                }
                () = self.stop.cancelled(), if stopped_at.is_none() && !closing => {
                    if protocol == Protocol::H2 {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    } else {
                        stopped_at = Some(Instant::now());
                        idle_limit = STOP_IDLE_GRACE;
                        tick = tokio::time::interval(STOP_IDLE_GRACE / 4);
                    }
                }
                _ = tick.tick(), if !closing => {
                    let quiet = activity.idle_since(opened).map(|t| stopped_at.map_or(t, |s| t.max(s)));
                    if quiet.is_some_and(|t| t.elapsed() >= idle_limit) {
                        tracing::debug!(%peer, ?protocol, stopping = stopped_at.is_some(), "closing idle connection");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }

    /// The TLS handshake within `handshake_timeout`, counted.
    async fn handshake(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                self.metrics.handshake(Handshake::Ok);
                Some(tls)
            }
            Ok(Err(error)) => {
                self.metrics.handshake(Handshake::Failed);
                tracing::debug!(%peer, %error, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.metrics.handshake(Handshake::TimedOut);
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// After stop, an HTTP/1.1 connection without a request for this long is closed (see `drive`).
const STOP_IDLE_GRACE: Duration = Duration::from_secs(1);

/// How long a closed connection keeps reading (and discarding) what the peer still sends.
///
/// A client may write a request just before it reads our HTTP/2 GOAWAY or the end of an HTTP/1.1
/// keep-alive connection. Were the socket closed at once, the kernel would answer those bytes
/// with a reset, and the client (the API server) would report "write: broken pipe" or
/// "connection reset" and fail the admission, instead of seeing the GOAWAY and retrying the
/// request elsewhere. One second, as Go's HTTP/2 server gives after its final GOAWAY.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Ends the TLS session (close_notify and FIN, unless hyper already did) and reads until the
/// peer closes or [`CLOSE_LINGER`] passes. Bytes are discarded undecrypted: nothing after our
/// close is answered.
async fn linger(mut tls: TlsStream<TcpStream>) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        let _ = tls.shutdown().await;
        let (mut tcp, _) = tls.into_inner();
        let mut sink = vec![0u8; 2048];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The connection's stream, handed back through a channel when hyper drops it, so that the
/// connection task can [`linger`] before closing the socket.
struct Returned {
    io: Option<TlsStream<TcpStream>>,
    back: Option<oneshot::Sender<TlsStream<TcpStream>>>,
}

impl Returned {
    fn new(io: TlsStream<TcpStream>) -> (Self, oneshot::Receiver<TlsStream<TcpStream>>) {
        let (back, returned) = oneshot::channel();
        let io = Self {
            io: Some(io),
            back: Some(back),
        };
        (io, returned)
    }

    fn io(&mut self) -> std::io::Result<Pin<&mut TlsStream<TcpStream>>> {
        self.io
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| std::io::ErrorKind::NotConnected.into())
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            // The receiver is gone only when the connection task itself was dropped.
            let _ = back.send(io);
        }
    }
}

impl AsyncRead for Returned {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => io.poll_read(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

impl AsyncWrite for Returned {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.io() {
            Ok(io) => io.poll_write(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.io() {
            Ok(io) => io.poll_write_vectored(cx, bufs),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => io.poll_flush(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => io.poll_shutdown(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

impl Builders {
    /// HTTP/1.1, HTTP/2 and sniffing connection builders with `limits`.
    fn new(limits: &Limits) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(limits.h2_max_header_list_bytes)
            .keep_alive_interval(limits.h2_keep_alive_interval)
            .keep_alive_timeout(limits.h2_keep_alive_timeout)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            // Rapid-reset (CVE-2023-44487) bounds, hyper's defaults made explicit.
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024);
        Self {
            h1: http.clone().http1_only(),
            h2: http.clone().http2_only(),
            sniff: http,
        }
    }
}

struct Builders {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    sniff: auto::Builder<TokioExecutor>,
}
