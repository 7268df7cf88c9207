//! HTTP/2 over cleartext with prior knowledge (h2c): a backend answering
//! `GET /` with a 13-byte body and the gRPC unary method
//! [`UNARY_PATH`] (the request's message echoed back, `grpc-status: 0`), and
//! a load client keeping up to `streams` requests in flight on each
//! connection.
//!
//! Both sides run on monoio with monoio-http's h2 (the project's runtime and
//! its h2 port), each on its own thread with its own runtime on the epoll
//! driver: HPACK, flow control and stream states are too much to write a
//! second time for a bench. The proxy uses the same h2 code, so a fault
//! both share would not show here; the engine's tests hold the proxy to
//! h2load, nghttp and grpcio.
//!
//! Pacing: monoio's timers tick in milliseconds, too coarse for an open
//! loop whose requests take tens of microseconds. In fixed-rate mode a plain
//! thread per connection sleeps until each request is due (as the blocking
//! clients do) and hands the due time to the connection's runtime; latency
//! counts from the due time, so that hand-over (a cross-thread wake-up, a
//! few µs) is charged to direct and proxied runs alike.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_channel::mpsc;
use futures_core::Stream;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use monoio::net::TcpStream;
use monoio_http::h2::{client, server, RecvStream};

use crate::grpc;
use crate::load::{self, Client, ConnectionResult, Mode, Plan};

/// The gRPC unary method the backend serves.
pub const UNARY_PATH: &str = "/bench.Echo/Unary";
/// Request bodies larger than this are refused (gRPC's default limit on a
/// received message).
const MAX_BODY: usize = 4 << 20;

type Runtime = monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>;

/// A runtime for one bench thread (the epoll driver: bench scaffolding, not
/// the code under test; the timer is for [`crate::IO_TIMEOUT`]s).
fn runtime() -> io::Result<Runtime> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
}

fn h2_io_error(e: monoio_http::h2::Error) -> io::Error {
    if e.is_io() {
        if let Some(io) = e.into_io() {
            return io;
        }
        return io::Error::other("h2 I/O error");
    }
    io::Error::other(e.to_string())
}

/// Serves h2c on `listener` until `stop` is set; the body of
/// [`crate::backend::Backend::spawn_server`]. Connections still open when
/// it stops are closed with its runtime.
pub fn serve(listener: std::net::TcpListener, stop: Arc<AtomicBool>) {
    if let Err(e) = serve_until(listener, &stop) {
        eprintln!("bench backend http2: {e}");
    }
}

fn serve_until(listener: std::net::TcpListener, stop: &AtomicBool) -> io::Result<()> {
    // monoio's accept on a blocking fd would block the whole runtime.
    listener.set_nonblocking(true)?;
    runtime()?.block_on(async {
        let listener = monoio::net::TcpListener::from_std(listener)?;
        loop {
            let accepted = listener.accept().await;
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
            match accepted {
                Ok((stream, _)) => {
                    stream.set_nodelay(true)?;
                    monoio::spawn(connection(stream));
                }
                Err(e) => {
                    // EMFILE and friends: say so and keep going (after a
                    // pause, so a persistent failure does not spin); the
                    // load generator counts the connections that fail.
                    eprintln!("bench backend http2: accept failed: {e}");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

/// Whether an error is the ordinary end of a connection at the end of a
/// run (clients just drop their sockets).
fn is_hang_up(e: &monoio_http::h2::Error) -> bool {
    e.get_io().is_some_and(|io| {
        matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        )
    })
}

async fn connection(stream: TcpStream) {
    let mut conn = match server::handshake(stream).await {
        Ok(c) => c,
        Err(e) => {
            if !is_hang_up(&e) {
                eprintln!("bench backend http2: handshake failed: {e}");
            }
            return;
        }
    };
    while let Some(accepted) = conn.accept().await {
        match accepted {
            Ok((req, respond)) => answer(req, respond),
            Err(e) => {
                if !is_hang_up(&e) {
                    eprintln!("bench backend http2: connection failed: {e}");
                }
                return;
            }
        }
    }
}

fn response(status: StatusCode, content_type: &'static str) -> Response<()> {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Routes one stream. `GET /` is answered at once; the gRPC method reads its
/// request body first, on a task of its own.
fn answer(req: Request<RecvStream>, mut respond: server::SendResponse<Bytes>) {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => {
            let resp = response(StatusCode::OK, "text/plain");
            if let Ok(mut body) = respond.send_response(resp, false) {
                let _ = body.send_data(Bytes::from_static(crate::http1::SMALL_BODY), true);
            }
        }
        (&Method::POST, UNARY_PATH) => {
            let grpc = req
                .headers()
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(grpc::CONTENT_TYPE.as_bytes()));
            if grpc {
                monoio::spawn(unary(req.into_body(), respond));
            } else {
                let resp = response(StatusCode::UNSUPPORTED_MEDIA_TYPE, "text/plain");
                let _ = respond.send_response(resp, true);
            }
        }
        _ => {
            let _ = respond.send_response(response(StatusCode::NOT_FOUND, "text/plain"), true);
        }
    }
}

/// The whole request body; one chunk (the usual case) is kept as it is.
async fn read_body(body: &mut RecvStream) -> Result<Bytes, String> {
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        let len = first.as_ref().map_or(0, Bytes::len) + more.as_ref().map_or(0, BytesMut::len);
        if len + chunk.len() > MAX_BODY {
            return Err(format!("request body over {MAX_BODY} bytes"));
        }
        match (&first, &mut more) {
            (None, _) => first = Some(chunk),
            (Some(f), None) => {
                let mut m = BytesMut::from(&f[..]);
                m.extend_from_slice(&chunk);
                more = Some(m);
            }
            (Some(_), Some(m)) => m.extend_from_slice(&chunk),
        }
    }
    Ok(match more {
        Some(m) => m.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// The unary echo: 200, the request's frame back, `grpc-status: 0`; a
/// malformed frame gets `grpc-status: 13` and a `grpc-message`.
async fn unary(mut body: RecvStream, mut respond: server::SendResponse<Bytes>) {
    let request = match read_body(&mut body).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench backend http2: reading a gRPC request: {e}");
            respond.send_reset(monoio_http::h2::Reason::INTERNAL_ERROR);
            return;
        }
    };
    let Ok(mut out) = respond.send_response(response(StatusCode::OK, grpc::CONTENT_TYPE), false)
    else {
        return;
    };
    let mut trailers = HeaderMap::new();
    match grpc::single_message(&request) {
        Ok(_) => {
            if out.send_data(request, false).is_err() {
                return;
            }
            trailers.insert(
                HeaderName::from_static("grpc-status"),
                HeaderValue::from_static(grpc::STATUS_OK),
            );
        }
        Err(e) => {
            trailers.insert(
                HeaderName::from_static("grpc-status"),
                HeaderValue::from_static(grpc::STATUS_INTERNAL),
            );
            // FrameError's messages are plain ASCII, as grpc-message wants.
            if let Ok(v) = HeaderValue::from_str(&e.to_string()) {
                trailers.insert(HeaderName::from_static("grpc-message"), v);
            }
        }
    }
    let _ = out.send_trailers(trailers);
}

/// What each request of a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `GET <path>`, expecting 200 and a `body`-byte body.
    Get { path: &'static str, body: usize },
    /// The gRPC unary echo with a `message`-byte message, expecting it back
    /// and `grpc-status: 0`.
    Unary { message: usize },
}

/// A [`Call`] made ready to send over and over.
struct Prepared {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// The request body (the gRPC frame).
    body: Option<Bytes>,
    expect: Expect,
}

enum Expect {
    /// A body of this many bytes.
    Body(usize),
    /// These bytes back (the request's frame), then `grpc-status: 0`.
    Echo(Bytes),
}

impl Prepared {
    fn new(call: Call) -> io::Result<Self> {
        let uri = |path: &str| {
            format!("http://bench.test{path}")
                .parse::<Uri>()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{path}: {e}")))
        };
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", HeaderValue::from_static("ringmesh-bench"));
        Ok(match call {
            Call::Get { path, body } => {
                headers.insert("accept", HeaderValue::from_static("*/*"));
                Self {
                    method: Method::GET,
                    uri: uri(path)?,
                    headers,
                    body: None,
                    expect: Expect::Body(body),
                }
            }
            Call::Unary { message } => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(grpc::CONTENT_TYPE));
                // Required by gRPC: it tells proxies the client reads trailers.
                headers.insert("te", HeaderValue::from_static("trailers"));
                let msg: Vec<u8> = (0..message).map(|i| (i % 251) as u8).collect();
                let frame = grpc::frame(&msg);
                Self {
                    method: Method::POST,
                    uri: uri(UNARY_PATH)?,
                    headers,
                    body: Some(frame.clone()),
                    expect: Expect::Echo(frame),
                }
            }
        })
    }

    fn request(&self) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Why a request failed, and whether the connection can carry more.
struct Failure {
    message: String,
    /// The connection is gone (I/O error, GOAWAY): stop sending on it.
    fatal: bool,
}

impl Failure {
    fn stream(message: String) -> Self {
        Self {
            message,
            fatal: false,
        }
    }
}

impl From<monoio_http::h2::Error> for Failure {
    fn from(e: monoio_http::h2::Error) -> Self {
        Self {
            fatal: e.is_io() || e.is_go_away(),
            message: e.to_string(),
        }
    }
}

/// One h2c connection of the load; its requests run on its own runtime.
pub struct Http2Client {
    runtime: Runtime,
    send: client::SendRequest<Bytes>,
    call: Rc<Prepared>,
    streams: usize,
}

impl Http2Client {
    /// Connects and sends the connection preface; each request will be
    /// `call`, with up to `streams` of them in flight.
    pub fn connect(addr: SocketAddr, call: Call, streams: usize) -> io::Result<Self> {
        let call = Rc::new(Prepared::new(call)?);
        let mut runtime = runtime()?;
        let send = runtime.block_on(async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (send, conn) = client::handshake(stream).await.map_err(h2_io_error)?;
            // The connection's own task: frames in and out for every stream.
            // Its error, if any, reaches the requests.
            monoio::spawn(async move {
                let _ = conn.await;
            });
            io::Result::Ok(send)
        })?;
        Ok(Self {
            runtime,
            send,
            call,
            streams: streams.max(1),
        })
    }

    /// One request on a connection of its own, outside any load run (for
    /// tests): `Err` says what was wrong with the answer.
    pub fn call_once(addr: SocketAddr, call: Call) -> io::Result<()> {
        let mut c = Self::connect(addr, call, 1)?;
        let (send, call) = (c.send.clone(), c.call.clone());
        c.runtime
            .block_on(async move {
                monoio::time::timeout(crate::IO_TIMEOUT, request(&send, &call)).await
            })
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
            .map_err(|f| io::Error::other(f.message))
    }
}

/// One request and its whole answer, checked.
async fn request(send: &client::SendRequest<Bytes>, call: &Prepared) -> Result<(), Failure> {
    let mut send = send.clone().ready().await?;
    let (response, mut upload) = send.send_request(call.request(), call.body.is_none())?;
    if let Some(b) = &call.body {
        // Small: h2 buffers it until the stream's window allows.
        upload.send_data(b.clone(), true)?;
    }
    let response = response.await?;
    let status = response.status();
    if status != StatusCode::OK {
        let why = response
            .headers()
            .get("l5d-proxy-error")
            .map(|v| format!(" ({})", String::from_utf8_lossy(v.as_bytes())))
            .unwrap_or_default();
        return Err(Failure::stream(format!("expected 200, got {status}{why}")));
    }
    let (head, mut body) = response.into_parts();
    let mut received = 0usize;
    let mut differs = false;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if let Expect::Echo(want) = &call.expect {
            differs |= want.get(received..received + chunk.len()) != Some(&chunk[..]);
        }
        received += chunk.len();
    }
    let trailers = body.trailers().await?;
    match &call.expect {
        Expect::Body(len) if received != *len => Err(Failure::stream(format!(
            "expected a {len}-byte body, got {received}"
        ))),
        Expect::Body(_) => Ok(()),
        Expect::Echo(want) => {
            // A trailers-only answer carries its status in the headers.
            let fields = trailers.as_ref().unwrap_or(&head.headers);
            let text = |name: &str| {
                fields
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            match text("grpc-status").as_deref() {
                Some(grpc::STATUS_OK) => {}
                Some(s) => {
                    let msg = text("grpc-message").unwrap_or_default();
                    return Err(Failure::stream(format!("grpc-status {s} {msg}")));
                }
                None => return Err(Failure::stream("no grpc-status".to_string())),
            }
            if differs || received != want.len() {
                return Err(Failure::stream(format!(
                    "the echoed message differs ({received} bytes back, {} sent)",
                    want.len()
                )));
            }
            Ok(())
        }
    }
}

/// State shared by one connection's tasks (one thread: `Rc`, `Cell`).
struct Shared {
    result: RefCell<ConnectionResult>,
    broken: Cell<bool>,
    in_flight: Cell<usize>,
    /// The open loop's dispatcher, waiting for a stream to finish.
    dispatcher: Cell<Option<Waker>>,
}

impl Shared {
    /// Records a finished request that was due (open loop) or sent (closed
    /// loop) at `since`.
    fn finish(&self, since: Instant, measured: bool, outcome: Option<Result<(), Failure>>) {
        let mut r = self.result.borrow_mut();
        match outcome {
            Some(Ok(())) => {
                if measured {
                    r.record_since(since);
                }
            }
            Some(Err(f)) => {
                self.broken.set(self.broken.get() || f.fatal);
                r.record_error(f.message);
            }
            None => r.record_error(format!("no answer within {:?}", crate::IO_TIMEOUT)),
        }
    }

    /// Waits until fewer than `limit` requests are in flight (one waiter:
    /// the dispatcher).
    fn below(&self, limit: usize) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.in_flight.get() < limit {
                Poll::Ready(())
            } else {
                self.dispatcher.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }

    fn one_done(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        if let Some(w) = self.dispatcher.take() {
            w.wake();
        }
    }
}

async fn timed_request(
    send: &client::SendRequest<Bytes>,
    call: &Prepared,
) -> Option<Result<(), Failure>> {
    monoio::time::timeout(crate::IO_TIMEOUT, request(send, call))
        .await
        .ok()
}

impl Client for Http2Client {
    fn drive(self: Box<Self>, plan: &Plan) -> ConnectionResult {
        let Self {
            mut runtime,
            send,
            call,
            streams,
        } = *self;
        let shared = Rc::new(Shared {
            result: RefCell::new(ConnectionResult::new()),
            broken: Cell::new(false),
            in_flight: Cell::new(0),
            dispatcher: Cell::new(None),
        });
        match plan.mode {
            Mode::FixedRate { .. } => {
                let (due_tx, due_rx) = mpsc::unbounded::<Instant>();
                let pacing = *plan;
                let pacer = std::thread::Builder::new()
                    .name(format!("load-{}-pacer", plan.index))
                    .spawn(move || {
                        load::precise_sleeps();
                        let mut k = 0;
                        while let Some(due) = pacing.scheduled(k) {
                            k += 1;
                            load::sleep_until(due);
                            // Closed: the connection gave up.
                            if due_tx.unbounded_send(due).is_err() {
                                return;
                            }
                        }
                    });
                match pacer {
                    Ok(pacer) => {
                        runtime.block_on(open_loop(
                            due_rx,
                            send,
                            call,
                            streams,
                            shared.clone(),
                            *plan,
                        ));
                        let _ = pacer.join();
                    }
                    Err(e) => shared
                        .result
                        .borrow_mut()
                        .record_error(format!("cannot start the pacer thread: {e}")),
                }
            }
            Mode::MaxThroughput => {
                runtime.block_on(closed_loop(send, call, streams, shared.clone(), *plan));
            }
        }
        shared.result.take()
    }
}

/// Sends each request as the pacer says it is due, on a task of its own,
/// with at most `streams` in flight: a request due while all are busy waits,
/// and the wait counts (it is measured from the due time).
async fn open_loop(
    mut due: mpsc::UnboundedReceiver<Instant>,
    send: client::SendRequest<Bytes>,
    call: Rc<Prepared>,
    streams: usize,
    shared: Rc<Shared>,
    plan: Plan,
) {
    while let Some(at) = poll_fn(|cx| Pin::new(&mut due).poll_next(cx)).await {
        shared.below(streams).await;
        if shared.broken.get() {
            break;
        }
        shared.in_flight.set(shared.in_flight.get() + 1);
        let (send, call, shared) = (send.clone(), call.clone(), shared.clone());
        monoio::spawn(async move {
            let outcome = timed_request(&send, &call).await;
            shared.finish(at, plan.measures(at), outcome);
            shared.one_done();
        });
    }
    // Dropping the receiver stops the pacer; the last answers are awaited.
    drop(due);
    shared.below(1).await;
}

/// `streams` tasks, each sending its next request when its last answer is
/// in, until the window ends.
async fn closed_loop(
    send: client::SendRequest<Bytes>,
    call: Rc<Prepared>,
    streams: usize,
    shared: Rc<Shared>,
    plan: Plan,
) {
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            let (send, call, shared) = (send.clone(), call.clone(), shared.clone());
            monoio::spawn(async move {
                loop {
                    let sent = Instant::now();
                    if sent >= plan.measure_end || shared.broken.get() {
                        return;
                    }
                    let outcome = timed_request(&send, &call).await;
                    shared.finish(sent, plan.measures(sent), outcome);
                }
            })
        })
        .collect();
    for w in workers {
        w.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;

    #[test]
    fn backend_answers_both_routes_and_refuses_the_rest() {
        let b = Backend::spawn_server("http2", serve).unwrap();
        Http2Client::call_once(
            b.addr(),
            Call::Get {
                path: "/",
                body: crate::http1::SMALL_BODY.len(),
            },
        )
        .unwrap();
        Http2Client::call_once(b.addr(), Call::Unary { message: 100 }).unwrap();
        // 70 KiB: more than a stream's initial window, several DATA frames.
        Http2Client::call_once(b.addr(), Call::Unary { message: 70_000 }).unwrap();
        let e = Http2Client::call_once(
            b.addr(),
            Call::Get {
                path: "/nope",
                body: 0,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
        let e = Http2Client::call_once(
            b.addr(),
            Call::Get {
                path: "/",
                body: 12,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("13"), "{e}");
    }

    #[test]
    fn a_malformed_grpc_frame_gets_a_non_ok_status() {
        let b = Backend::spawn_server("http2", serve).unwrap();
        let mut rt = runtime().unwrap();
        let status = rt.block_on(async {
            let stream = TcpStream::connect(b.addr()).await.unwrap();
            let (send, conn) = client::handshake(stream).await.unwrap();
            monoio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = Request::new(());
            *req.method_mut() = Method::POST;
            *req.uri_mut() = format!("http://bench.test{UNARY_PATH}").parse().unwrap();
            req.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(grpc::CONTENT_TYPE));
            let mut send = send.ready().await.unwrap();
            let (resp, mut up) = send.send_request(req, false).unwrap();
            // Says 9 bytes, sends 2.
            up.send_data(Bytes::from_static(b"\0\0\0\0\x09hi"), true)
                .unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            while let Some(c) = body.data().await {
                c.unwrap();
            }
            body.trailers().await.unwrap().unwrap()
        });
        assert_eq!(status["grpc-status"], grpc::STATUS_INTERNAL);
        assert!(status["grpc-message"].to_str().unwrap().contains("9 bytes"));
    }
}
