//! The control core: a plain thread (not a worker) that owns discovery. It
//! sleeps until the next refresh is due or a message arrives, and publishes
//! snapshots through the lock-free channel; workers never wait on it.

use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Instant;

use ringmesh_discovery::{Authority, Discovery};

pub(crate) enum ControlMsg {
    Stop,
    /// A worker met a name the snapshot lacks (an HTTP authority): resolve
    /// it and publish. Sending never blocks the worker.
    Watch(Authority),
}

/// The control channel is created before the workers (they get senders)
/// and served once they are up.
pub(crate) fn channel() -> (mpsc::Sender<ControlMsg>, mpsc::Receiver<ControlMsg>) {
    mpsc::channel()
}

pub(crate) fn spawn(
    mut discovery: Discovery,
    rx: mpsc::Receiver<ControlMsg>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ringmesh-control".into())
        .spawn(move || loop {
            let wait = discovery
                .next_deadline()
                .saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(ControlMsg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(ControlMsg::Watch(name)) => discovery.watch(name),
                Err(RecvTimeoutError::Timeout) => {
                    discovery.poll(Instant::now());
                }
            }
        })
}
