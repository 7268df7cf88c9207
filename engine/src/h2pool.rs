//! The HTTP/2 upstream connections of one worker, per endpoint (address
//! and server identity, [`Endpoint`]): a stream goes on a pooled connection
//! with room for it, and a burst of new streams to one endpoint shares one
//! new connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use futures_channel::oneshot;
use monoio_http::h2::client;
use ringmesh_admin::telemetry::KeyedState;

use crate::connect::Endpoint;

/// Streams one pooled upstream connection carries before another is opened
/// (the peer's own SETTINGS_MAX_CONCURRENT_STREAMS still applies: a stream
/// waits for room rather than failing).
pub(crate) const STREAMS_PER_CONNECTION: usize = 100;

/// One pooled upstream HTTP/2 connection.
pub(crate) struct Upstream {
    /// Tells connections to one endpoint apart (for retiring one).
    id: u64,
    send: client::SendRequest<Bytes>,
    /// Set when its connection task ended (closed, failed, or GOAWAY).
    closed: Rc<Cell<bool>>,
    /// Told when its endpoint was removed: the connection task closes it
    /// once no stream is open.
    drain: Option<oneshot::Sender<()>>,
}

/// Told when the connection it waits for is up (or why it is not).
pub(crate) type ConnectWaiter = oneshot::Sender<Result<(), crate::error::ProxyError>>;

/// This worker's HTTP/2 connections per endpoint.
#[derive(Default)]
pub(crate) struct Pool {
    conns: RefCell<HashMap<Endpoint, Vec<Upstream>, KeyedState>>,
    next_id: Cell<u64>,
    /// Endpoints a connection is being made to, with the streams waiting
    /// for it: a burst of new streams shares one new connection instead of
    /// each opening its own.
    pub(crate) connecting: RefCell<HashMap<Endpoint, Vec<ConnectWaiter>, KeyedState>>,
}

impl Pool {
    /// A connection to `ep` with room for another stream.
    pub(crate) fn take(&self, ep: &Endpoint) -> Option<(client::SendRequest<Bytes>, u64)> {
        let mut conns = self.conns.borrow_mut();
        let list = conns.get_mut(ep)?;
        list.retain(|u| !u.closed.get() && !u.send.has_conn_error());
        // Room below the peer's own limit too: a stream queued for a slot
        // on a full connection would wait behind streams that may never
        // end (their clients stopped reading), so it goes on another.
        // Streams reset and awaiting their reset's expiry hold no slot.
        list.iter()
            .find(|u| {
                // (Before the server's SETTINGS the library sends one
                // stream and queues the rest; the connection takes them.)
                let limit = if u.send.has_peer_settings() {
                    STREAMS_PER_CONNECTION.min(u.send.current_max_send_streams())
                } else {
                    STREAMS_PER_CONNECTION
                };
                u.send.num_streams_in_use() < limit
            })
            .map(|u| (u.send.clone(), u.id))
    }

    pub(crate) fn put(
        &self,
        ep: Endpoint,
        send: client::SendRequest<Bytes>,
        closed: Rc<Cell<bool>>,
        drain: oneshot::Sender<()>,
    ) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let up = Upstream {
            id,
            send,
            closed,
            drain: Some(drain),
        };
        self.conns.borrow_mut().entry(ep).or_default().push(up);
        id
    }

    /// Takes the connections to `addr` out of use and has each close once
    /// its open streams end; returns how many.
    pub(crate) fn drain_to(&self, addr: std::net::SocketAddr) -> usize {
        let mut drained = 0;
        self.conns.borrow_mut().retain(|ep, list| {
            if ep.addr != addr {
                return true;
            }
            for u in list.iter_mut() {
                if let Some(tx) = u.drain.take() {
                    let _ = tx.send(());
                }
            }
            drained += list.len();
            false
        });
        drained
    }

    /// Takes a connection out of use (its open streams go on).
    /// (Rare: a GOAWAY. Ids are unique per worker, so the endpoints at
    /// `addr` are searched rather than the caller carrying the identity.)
    pub(crate) fn retire(&self, addr: std::net::SocketAddr, id: u64) {
        for (ep, list) in self.conns.borrow_mut().iter_mut() {
            if ep.addr == addr {
                list.retain(|u| u.id != id);
            }
        }
    }
}
