//! A small HTTP/1.1 origin server for tests (std threads, httparse), with
//! routes that expose what the proxy did: the raw request head, body sizes
//! and checksums, chunked responses with trailers, request trailers echoed,
//! upgrades.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use super::{Backend, Fnv, Pattern};

/// The next request head's lines on `r`, lower-cased, each ending in
/// `\n` (the blank line left out); `None` at EOF. For test servers that
/// look at what the proxy forwarded.
pub fn head_lines(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(head);
        }
        head.push_str(&line.trim_end().to_ascii_lowercase());
        head.push('\n');
    }
}

/// Starts an origin server; `name` appears in `/hello` answers.
pub fn origin(name: &'static str) -> Backend {
    Backend::start(move |s| {
        let _ = serve(name, s);
    })
}

/// An origin server that counts the connections it accepted.
#[allow(dead_code)] // not every test binary uses it
pub fn counting_origin(
    name: &'static str,
) -> (Backend, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let backend = Backend::start(move |s| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = serve(name, s);
    });
    (backend, count)
}

/// An origin server on a listener the test bound (another loopback
/// address, a port shared with another origin).
pub fn origin_on(listener: std::net::TcpListener, name: &'static str) -> Backend {
    Backend::on(listener, move |s| {
        let _ = serve(name, s);
    })
}

struct Req {
    method: String,
    path: String,
    version: u8,
    head: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(r: &mut BufReader<TcpStream>) -> io::Result<Option<Req>> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            return Ok(None);
        }
        if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&head)
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(Some(Req {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        version: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        head,
    }))
}

/// Reads the request body, returning (length, checksum, a chunked body's
/// trailer lines).
fn read_body(r: &mut BufReader<TcpStream>, req: &Req) -> io::Result<(u64, u64, String)> {
    let mut trailers = String::new();
    let mut h = Fnv::default();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size_str = line.trim_end().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size_str.trim(), 16).map_err(io::Error::other)?;
            if size == 0 {
                // Trailers until the empty line.
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t)?;
                    if t == "\r\n" || t.is_empty() {
                        break;
                    }
                    trailers.push_str(&t);
                }
                break;
            }
            let mut left = size;
            while left > 0 {
                let n = (left as usize).min(buf.len());
                r.read_exact(&mut buf[..n])?;
                h.update(&buf[..n]);
                left -= n as u64;
                total += n as u64;
            }
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = req.header("content-length") {
        let mut left: u64 = len.trim().parse().map_err(io::Error::other)?;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            r.read_exact(&mut buf[..n])?;
            h.update(&buf[..n]);
            left -= n as u64;
            total += n as u64;
        }
    }
    Ok((total, h.0, trailers))
}

fn serve(name: &str, s: TcpStream) -> io::Result<()> {
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    while let Some(req) = read_head(&mut r)? {
        let keep = match req.header("connection") {
            Some(v) if v.to_ascii_lowercase().contains("close") => false,
            Some(v) if v.to_ascii_lowercase().contains("keep-alive") => true,
            _ => req.version == 1,
        };
        if req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        if req.path == "/sink" {
            // Counts a (large) body without checksumming it.
            let mut left: u64 = req
                .header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut buf = vec![0u8; 256 * 1024];
            while left > 0 {
                let n = r.read(&mut buf[..(left as usize).min(256 * 1024)])?;
                if n == 0 {
                    return Ok(());
                }
                left -= n as u64;
            }
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")?;
            continue;
        }
        let (len, sum, trailers) = read_body(&mut r, &req)?;
        let conn = if keep { "keep-alive" } else { "close" };
        let path = req.path.clone();
        if path == "/hello" {
            let body = format!("hello from {name}\n");
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n{body}",
                body.len()
            )?;
        } else if path == "/echo-head" {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Server-MiXeD: yes\r\n\r\n",
                req.head.len()
            )?;
            w.write_all(&req.head)?;
        } else if path == "/echo-trailers" {
            // The request's trailer lines, as the body.
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{trailers}",
                trailers.len()
            )?;
        } else if path == "/upload" {
            let body = format!("{len} {sum:016x}\n");
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
        } else if let Some(n) = path.strip_prefix("/download/") {
            let n: usize = n.parse().unwrap_or(0);
            write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n")?;
            let mut p = Pattern::new(7);
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(buf.len());
                p.fill(&mut buf[..k]);
                w.write_all(&buf[..k])?;
                left -= k;
            }
        } else if let Some(n) = path.strip_prefix("/zeros/") {
            let n: usize = n.parse().unwrap_or(0);
            write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n")?;
            let buf = vec![0u8; 256 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(buf.len());
                w.write_all(&buf[..k])?;
                left -= k;
            }
        } else if path == "/chunked" {
            w.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer\r\n\r\n\
                  5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n",
            )?;
        } else if let Some(code) = path.strip_prefix("/status/") {
            write!(w, "HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\n\r\n")?;
        } else if path == "/bye" {
            // Announces keep-alive, then closes the connection anyway (as
            // servers do when their idle timeout fires).
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye")?;
            std::thread::sleep(std::time::Duration::from_millis(20));
            return Ok(());
        } else if path == "/never" {
            // Never answers; holds the connection until the peer leaves.
            let mut sink = [0u8; 64];
            while r.read(&mut sink)? > 0 {}
            return Ok(());
        } else if path == "/close-delimited" {
            w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")?;
            return Ok(());
        } else if path == "/ws" && req.header("upgrade").is_some() {
            w.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            )?;
            // Raw echo from now on.
            let mut buf = [0u8; 4096];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                w.write_all(&buf[..n])?;
            }
        } else if req.method == "HEAD" {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")?;
        } else {
            w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        }
        if !keep {
            return Ok(());
        }
    }
    Ok(())
}
