//! The TCP relay's io_uring multishot receive (provided-buffer ring), on
//! both io drivers: request/response traffic goes through it on io_uring
//! (and never on epoll), a ring too small for the load falls back to plain
//! reads without losing or reordering a byte, and a bulk transfer that
//! starts on the ring switches to its bulk buffer intact. Also the
//! per-worker io_uring enter/completion counters.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;

use common::*;
use ringmesh_engine::IoDriver;

/// `rounds` request/response exchanges of pattern bytes, each of a size
/// below the relay's 16 KiB buffer (so no read marks a bulk transfer);
/// every echo is checked byte for byte. Then a clean half-close.
fn exchanges(addr: std::net::SocketAddr, seed: u64, rounds: usize) -> Result<(), String> {
    let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    c.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut p = Pattern::new(seed);
    let mut size = Pattern::new(seed ^ 0x5eed);
    let mut sent = vec![0u8; 12_000];
    let mut back = vec![0u8; 12_000];
    for round in 0..rounds {
        let mut s = [0u8; 2];
        size.fill(&mut s);
        let n = 1 + usize::from(u16::from_le_bytes(s)) % 12_000;
        p.fill(&mut sent[..n]);
        c.write_all(&sent[..n])
            .and_then(|()| c.read_exact(&mut back[..n]))
            .map_err(|e| format!("seed {seed} round {round}: {e}"))?;
        if back[..n] != sent[..n] {
            return Err(format!("seed {seed} round {round}: echo differs"));
        }
    }
    c.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("seed {seed}: {} unexpected bytes", rest.len()));
    }
    Ok(())
}

fn run_clients(addr: std::net::SocketAddr, clients: usize, rounds: usize) {
    let failures: Vec<String> = (0..clients)
        .map(|i| thread::spawn(move || exchanges(addr, 1000 + i as u64, rounds)))
        .collect::<Vec<_>>()
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
}

fn ring_counts(proxy: &ringmesh_engine::Proxy) -> (u64, u64) {
    proxy.worker_stats().iter().fold((0, 0), |(r, e), s| {
        (r + s.ring_receives, e + s.ring_exhausted)
    })
}

fn request_response(driver: IoDriver) {
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 200;
    let backend = Backend::echo();
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let proxy = start_proxy(driver, &[("RINGMESH_TCP_FORWARD", &fwd)]);
    run_clients(proxy.forward_addrs()[0], CLIENTS, ROUNDS);
    let (receives, exhausted) = ring_counts(&proxy);
    eprintln!(
        "{}: ring receives {receives}, ring exhausted {exhausted}",
        driver_name(driver)
    );
    match driver {
        // Every exchange is at least one receive each way, except each
        // client's first message, which protocol detection read.
        IoDriver::Uring => {
            assert!(
                receives >= (2 * CLIENTS * ROUNDS - CLIENTS) as u64,
                "only {receives} multishot receives"
            );
            assert_eq!(exhausted, 0, "the default ring ran dry");
        }
        _ => assert_eq!((receives, exhausted), (0, 0)),
    }
    // The ring's own counters: every ring receive and every write is a
    // completion, reaped over fewer enters than completions (batching).
    // Every write is a submission of its own; a multishot receive is one
    // submission for many completions.
    let (enters, completions, submissions) =
        proxy.worker_stats().iter().fold((0, 0, 0), |(e, c, n), s| {
            (
                e + s.uring_enters,
                c + s.uring_completions,
                n + s.uring_submissions,
            )
        });
    eprintln!(
        "{}: io_uring enters {enters}, completions {completions}, submissions {submissions}",
        driver_name(driver)
    );
    match driver {
        IoDriver::Uring => {
            assert!(completions >= 2 * receives, "{completions} completions");
            assert!(enters > 0 && enters < completions, "{enters} enters");
            assert!(
                submissions >= (2 * CLIENTS * ROUNDS) as u64 && submissions < completions,
                "{submissions} submissions"
            );
        }
        _ => assert_eq!((enters, completions, submissions), (0, 0, 0)),
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    request_response_goes_through_the_ring,
    super::request_response
);

fn tiny_ring(driver: IoDriver) {
    const CLIENTS: usize = 48;
    const ROUNDS: usize = 100;
    let backend = Backend::echo();
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    // Two buffers for 96 relay directions: most completions find the ring
    // empty and fall back to plain reads, then re-arm.
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("RINGMESH_TCP_RING_BUFFERS", "2"),
        ],
    );
    run_clients(proxy.forward_addrs()[0], CLIENTS, ROUNDS);
    let (receives, exhausted) = ring_counts(&proxy);
    eprintln!(
        "{}: ring receives {receives}, ring exhausted {exhausted}",
        driver_name(driver)
    );
    if driver == IoDriver::Uring {
        assert!(exhausted > 0, "the two-buffer ring never ran dry");
        assert!(receives > 0, "no receive went through the ring");
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(tiny_ring_falls_back_without_loss, super::tiny_ring);

/// Small exchanges first (the receive is armed on the ring), then 8 MiB
/// each way at once on the same connection: the first full read cancels
/// the receive, what it already got is sent in order, and the rest goes
/// through the bulk buffer.
fn small_then_bulk(driver: IoDriver) {
    const BULK: usize = 8 << 20;
    let backend = Backend::echo();
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let proxy = start_proxy(driver, &[("RINGMESH_TCP_FORWARD", &fwd)]);
    let mut c = connect(proxy.forward_addrs()[0]);
    for i in 0..50u8 {
        let msg = [i; 100];
        let mut back = [0u8; 100];
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    let mut wr = c.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut p = Pattern::new(77);
        let mut buf = vec![0u8; 64 << 10];
        let mut sum = Fnv::default();
        let mut left = BULK;
        while left > 0 {
            let n = left.min(buf.len());
            p.fill(&mut buf[..n]);
            sum.update(&buf[..n]);
            wr.write_all(&buf[..n]).unwrap();
            left -= n;
        }
        wr.shutdown(Shutdown::Write).unwrap();
        sum.0
    });
    let mut got = Fnv::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        // A plain read, not retried on EINTR: this thread started the proxy,
        // and must not be interrupted by the io_uring probe's ring teardown
        // (it was, in about a quarter of the runs, before the probe got a
        // thread of its own).
        let n = c.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.update(&buf[..n]);
        total += n;
    }
    assert_eq!(total, BULK);
    assert_eq!(got.0, writer.join().unwrap(), "bulk echo differs");
    if driver == IoDriver::Uring {
        assert!(ring_counts(&proxy).0 >= 100);
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(small_exchanges_then_bulk, super::small_then_bulk);
