//! The transport seam: a connection as the data paths see it, plain TCP
//! or TLS over TCP, carrying how it is secured ([`TlsStatus`]: the peer's
//! identity when there is one) for the metrics and the logs.
//!
//! Both kinds read and write through monoio's owned-buffer traits, and
//! split into halves the same way, so a path written against [`Transport`]
//! serves either. The plain-TCP fast paths (multishot receive into the
//! worker's buffer ring, splice, peek-based liveness of pooled
//! connections) need the socket itself: a path takes them only when
//! [`Transport::into_plain`] says the connection is plain, and falls back
//! to ordinary reads and writes otherwise.
//!
//! Must not: hold a TLS session's plaintext anywhere but in the session
//! (a TLS stream's bytes are only ever what rustls decrypted).

use std::io;
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio::BufResult;
use ringmesh_admin::telemetry::{NoTlsReason, TlsStatus};
use ringmesh_identity::Name;
use rustls::{ClientConfig, ClientConnection};

use crate::tls::TlsStream;

/// One connection, plain or TLS.
pub(crate) struct Transport {
    io: Io,
    tls: TlsStatus,
}

enum Io {
    Plain(TcpStream),
    /// TLS this proxy originated. Boxed: a session is ~1 KB and plain
    /// connections are the common case. (Terminated TLS, a server
    /// session, comes with inbound mTLS.)
    Tls(Box<TlsStream<ClientConnection>>),
}

impl Transport {
    /// A plain connection; `why` says why it has no TLS.
    pub(crate) fn plain(s: TcpStream, why: NoTlsReason) -> Self {
        Self {
            io: Io::Plain(s),
            tls: TlsStatus::NoIdentity(why),
        }
    }

    /// Originates TLS on `s` to the server named `id`: the server's
    /// certificate must be valid for `id` under `config`'s trust anchors.
    pub(crate) async fn tls_connect(
        s: TcpStream,
        config: Arc<ClientConfig>,
        id: &Name,
    ) -> io::Result<Self> {
        let session = ClientConnection::new(config, id.server_name())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let stream = TlsStream::handshake(s, session).await?;
        Ok(Self {
            io: Io::Tls(Box::new(stream)),
            tls: TlsStatus::Connected {
                server_id: id.to_shared(),
            },
        })
    }

    /// How the connection is secured (the metrics' `tls` labels).
    pub(crate) fn tls(&self) -> &TlsStatus {
        &self.tls
    }

    /// The socket itself, when the connection is plain.
    pub(crate) fn into_plain(self) -> Result<TcpStream, Self> {
        match self.io {
            Io::Plain(s) => Ok(s),
            io => Err(Self { io, ..self }),
        }
    }
}

// SAFETY: both kinds are safe to split: `TcpStream` is `Split`, and a
// `TlsStream` touches its session only between awaits (it waits for
// readiness, then moves bytes synchronously), so a read and a write in
// flight at once never interleave inside the session.
#[allow(unsafe_code)]
unsafe impl Split for Transport {}

impl AsyncReadRent for Transport {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match &mut self.io {
            Io::Plain(s) => s.read(buf).await,
            Io::Tls(t) => t.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match &mut self.io {
            Io::Plain(s) => s.readv(buf).await,
            Io::Tls(t) => t.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for Transport {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match &mut self.io {
            Io::Plain(s) => s.write(buf).await,
            Io::Tls(t) => t.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match &mut self.io {
            Io::Plain(s) => s.writev(buf).await,
            Io::Tls(t) => t.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match &mut self.io {
            Io::Plain(s) => s.flush().await,
            Io::Tls(t) => t.flush().await,
        }
    }

    /// Plain: shuts the write side down. TLS: sends close_notify first.
    async fn shutdown(&mut self) -> io::Result<()> {
        match &mut self.io {
            Io::Plain(s) => s.shutdown().await,
            Io::Tls(t) => t.shutdown().await,
        }
    }
}
