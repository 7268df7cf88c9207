//! The control core: a plain thread (not a worker) that owns discovery. It
//! sleeps until the next refresh is due or a message arrives, and publishes
//! snapshots through the lock-free channel; workers never wait on it.

use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Instant;

use ringmesh_discovery::Discovery;

pub(crate) enum ControlMsg {
    Stop,
}

pub(crate) fn spawn(
    mut discovery: Discovery,
) -> io::Result<(mpsc::Sender<ControlMsg>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("ringmesh-control".into())
        .spawn(move || loop {
            let wait = discovery
                .next_deadline()
                .saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(ControlMsg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    discovery.poll(Instant::now());
                }
            }
        })?;
    Ok((tx, handle))
}
