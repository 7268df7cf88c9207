//! Backends and clients for the balancing tests: keep-alive HTTP/1.1
//! backends that answer with their one-byte name (after a delay, or 503
//! while told to fail; one kind also reads and reports request bodies), a
//! proxy in front of them as one service, and clients that report which
//! backend answered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ringmesh_engine::IoDriver;

use super::{connect, start_proxy, Backend, TempDir};

/// A keep-alive HTTP/1.1 backend that answers every request with its
/// `name` (one byte) after `delay`.
pub fn backend(name: u8, delay: Duration) -> Backend {
    switchable(name, delay, Arc::new(AtomicBool::new(false)))
}

/// As [`backend`], answering 503 while `failing` is set.
pub fn switchable(name: u8, delay: Duration, failing: Arc<AtomicBool>) -> Backend {
    Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        loop {
            let mut line = String::new();
            // Request head: lines until the empty one.
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            thread::sleep(delay);
            let status: &[u8] = if failing.load(Ordering::Relaxed) {
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"
            };
            let resp = [status, &[name]].concat();
            if w.write_all(&resp).is_err() {
                return;
            }
        }
    })
}

/// A keep-alive backend that reads each request's `Content-Length` body,
/// reports it with its `name` on `bodies`, and after `delay` answers with
/// `{name} {body length}`: 503 while `failing` is set, else 200.
pub fn body_backend(
    name: u8,
    delay: Duration,
    failing: Arc<AtomicBool>,
    bodies: mpsc::Sender<(u8, Vec<u8>)>,
) -> Backend {
    Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while let Some(body) = read_request_body(&mut r) {
            let len = body.len();
            let _ = bodies.send((name, body));
            thread::sleep(delay);
            let status = if failing.load(Ordering::Relaxed) {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let text = format!("{} {len}", name as char);
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            );
            if w.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// Reads one request (head, then its `Content-Length` body) and returns
/// the body; `None` when the connection ends first.
pub fn read_request_body(r: &mut BufReader<std::net::TcpStream>) -> Option<Vec<u8>> {
    let mut len = 0;
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap();
                    }
                }
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(body)
}

/// Reads one answer of [`body_backend`]: (status line, body).
pub fn read_body_answer(r: &mut BufReader<std::net::TcpStream>) -> (String, String) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut len = 0;
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// A proxy forwarding to one service over `backends`, its static file
/// written in `dir` (kept by the caller until the proxy is gone).
pub fn proxy_to(driver: IoDriver, backends: &[&Backend], dir: &TempDir) -> ringmesh_engine::Proxy {
    proxy_with(driver, backends, dir, &[])
}

/// As [`proxy_to`], with more variables.
pub fn proxy_with(
    driver: IoDriver,
    backends: &[&Backend],
    dir: &TempDir,
    extra: &[(&str, &str)],
) -> ringmesh_engine::Proxy {
    let eps: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let file = super::service_file(dir, "web.test:80", &eps, "");
    let mut vars = vec![
        ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
        ("RINGMESH_DISCOVERY_STATIC", file.as_str()),
        ("LINKERD2_PROXY_CORES", "1"),
    ];
    vars.extend_from_slice(extra);
    start_proxy(driver, &vars)
}

/// Runs `clients` keep-alive clients until `stop` is set; every answer is
/// reported as (when, was it a 503, which backend).
pub fn answers(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
    with_body: bool,
) -> Vec<thread::JoinHandle<Vec<(Instant, bool, u8)>>> {
    answers_counted(addr, clients, stop, with_body, Arc::new(Tally::default()))
}

/// Live counts of what [`answers_counted`]'s clients have seen so far, so
/// a test can wait for a condition instead of a fixed time.
pub struct Tally {
    /// Answers of any status.
    pub answers: AtomicUsize,
    /// 503 answers.
    pub failures: AtomicUsize,
    /// Answers by backend name.
    pub by_name: [AtomicUsize; 256],
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            answers: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
            by_name: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }
}

impl Tally {
    /// Waits until `done` holds (true) or `limit` passes (false).
    pub fn wait(&self, limit: Duration, done: impl Fn(&Tally) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while !done(self) {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }

    pub fn failures(&self) -> usize {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn answers(&self) -> usize {
        self.answers.load(Ordering::Relaxed)
    }

    pub fn from(&self, name: u8) -> usize {
        self.by_name[name as usize].load(Ordering::Relaxed)
    }
}

/// As [`answers`], counting in `tally` as answers come.
pub fn answers_counted(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
    with_body: bool,
    tally: Arc<Tally>,
) -> Vec<thread::JoinHandle<Vec<(Instant, bool, u8)>>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            let tally = tally.clone();
            thread::spawn(move || {
                let conn = connect(addr);
                conn.set_nodelay(true).unwrap();
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let mut seen = Vec::new();
                // A request with a body is never retried elsewhere. (The
                // test backends read heads only; the body byte is skipped
                // as part of the next request line.)
                let request: &[u8] = if with_body {
                    b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 1\r\n\r\nx"
                } else {
                    b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"
                };
                while !stop.load(Ordering::Relaxed) {
                    w.write_all(request).unwrap();
                    let (status, name) = read_answer(&mut r);
                    let bad = status.contains(" 503 ");
                    seen.push((Instant::now(), bad, name));
                    if bad {
                        tally.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    tally.by_name[name as usize].fetch_add(1, Ordering::Relaxed);
                    tally.answers.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect()
}

/// Reads one answer of these backends: (status line, backend name).
pub fn read_answer(r: &mut BufReader<std::net::TcpStream>) -> (String, u8) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let mut name = [0u8; 1];
    r.read_exact(&mut name).unwrap();
    (status, name[0])
}
