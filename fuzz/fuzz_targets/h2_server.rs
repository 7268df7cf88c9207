//! The HTTP/2 server side as a client connection reaches it: bytes read
//! through the attack defences' frame guard (`h2guard`), in reads of a
//! fuzzer-chosen size, into the HTTP/2 server the engine runs
//! (`monoio-http`'s port of `h2`, built with the engine's default
//! settings), which answers every stream it accepts.
//!
//! Input: the first byte chooses the read size; the rest follows the
//! client preface.
//!
//! Checks: never panics or hangs (each connection is bounded by its input:
//! the transport reports EOF once it is read, and a guard violation fails
//! the read as in the engine, so nothing after it reaches the server).
#![no_main]

use std::cell::RefCell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, IoVecWrapper, IoVecWrapperMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::BufResult;
use monoio_http::h2::server;
use ringmesh_protocols::h2guard::{FrameGuard, GuardLimits, PREFACE};

/// A client connection whose bytes are the fuzz input.
struct FuzzIo {
    input: Vec<u8>,
    pos: usize,
    step: usize,
    guard: FrameGuard,
    tripped: bool,
}

impl AsyncReadRent for FuzzIo {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        if self.tripped {
            return (Err(std::io::ErrorKind::ConnectionAborted.into()), buf);
        }
        let n = self
            .step
            .min(self.input.len() - self.pos)
            .min(buf.bytes_total());
        let mut chunk = self.input[self.pos..self.pos + n].to_vec();
        self.pos += n;
        if self.guard.feed(&mut chunk, Instant::now()).is_err() {
            self.tripped = true;
            return (Err(std::io::Error::other("guard tripped")), buf);
        }
        // SAFETY: `buf` has room for `bytes_total() >= n` bytes from its
        // write pointer; exactly `n` are copied there and marked initialised.
        unsafe {
            std::ptr::copy_nonoverlapping(chunk.as_ptr(), buf.write_ptr(), n);
            buf.set_init(n);
        }
        (Ok(n), buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        let slice = match IoVecWrapperMut::new(buf) {
            Ok(slice) => slice,
            Err(buf) => return (Ok(0), buf),
        };
        let (res, slice) = self.read(slice).await;
        let mut buf = slice.into_inner();
        if let Ok(n) = res {
            // SAFETY: `n` bytes were written into the first iovec (above).
            unsafe { buf.set_init(n) };
        }
        (res, buf)
    }
}

impl AsyncWriteRent for FuzzIo {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let n = buf.bytes_init();
        (Ok(n), buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // The first buffer only: a short write the caller continues.
        match IoVecWrapper::new(buf) {
            Ok(one) => {
                let n = one.bytes_init();
                (Ok(n), one.into_inner())
            }
            Err(buf) => (Ok(0), buf),
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    static RUNTIME: RefCell<monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>> =
        RefCell::new(
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("a monoio runtime"),
        );
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(rest);
    let io = FuzzIo {
        input,
        pos: 0,
        step: usize::from(split).max(1) * 4,
        guard: FrameGuard::new(GuardLimits::default()),
        tripped: false,
    };
    RUNTIME.with(|rt| {
        rt.borrow_mut().block_on(async move {
            // The engine's defaults (engine/src/config.rs, http2.rs).
            let mut builder = server::Builder::new();
            builder
                .initial_window_size(65_535)
                .initial_connection_window_size(1 << 20)
                .max_concurrent_streams(1_000)
                .max_header_list_size(64 * 1024);
            let serve = async move {
                let Ok(mut conn) = builder.handshake::<_, Bytes>(io).await else {
                    return;
                };
                while let Some(next) = conn.accept().await {
                    let Ok((req, mut respond)) = next else {
                        break;
                    };
                    drop(req);
                    let _ = respond.send_response(http::Response::new(()), true);
                }
            };
            // Every read returns at once, so this only bounds a bug.
            let bounded = monoio::time::timeout(Duration::from_secs(5), serve).await;
            assert!(bounded.is_ok(), "the HTTP/2 server hung on its input");
        })
    });
});
