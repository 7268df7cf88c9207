//! A loopback server on its own thread: by default one accept thread and
//! one thread per connection on blocking std sockets ([`Backend::spawn`]),
//! or any server that runs its own accept loop, such as the HTTP/2 backend's
//! monoio runtime ([`Backend::spawn_server`]). Threads inherit the spawning
//! thread's CPU affinity, which is how the bench keeps backends on the load
//! generator's CPU.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Serves one accepted connection until the peer closes it.
pub type Handler = fn(TcpStream) -> io::Result<()>;

/// A running backend on `127.0.0.1:<ephemeral>`; stops accepting when
/// dropped (connections still open finish when their clients close them).
pub struct Backend {
    name: &'static str,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Backend {
    /// A thread per connection, each running `handler`.
    pub fn spawn(name: &'static str, handler: Handler) -> io::Result<Self> {
        Self::spawn_server(name, move |listener, stop: Arc<AtomicBool>| {
            accept_loop(name, listener, &stop, handler)
        })
    }

    /// `serve` on its own thread, with a listener on a free loopback port.
    /// It accepts until the flag is set, checking it after every accepted
    /// connection (`Drop` sets it, then connects once to wake the accept).
    pub fn spawn_server(
        name: &'static str,
        serve: impl FnOnce(TcpListener, Arc<AtomicBool>) + Send + 'static,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = std::thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn({
                let stop = stop.clone();
                move || serve(listener, stop)
            })?;
        Ok(Self {
            name,
            addr,
            stop,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

fn accept_loop(name: &'static str, listener: TcpListener, stop: &AtomicBool, handler: Handler) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: say so once per failure and keep going;
                // the load generator will count the connections that fail.
                eprintln!("bench backend {name}: accept failed: {e}");
                continue;
            }
        };
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-conn"))
            .spawn(move || {
                // No read timeout here: an idle keep-alive connection in the
                // proxy's upstream pool must stay usable, as with a real
                // server; the thread ends when the peer closes.
                let setup = stream
                    .set_nodelay(true)
                    .and_then(|()| stream.set_write_timeout(Some(crate::IO_TIMEOUT)));
                if let Err(e) = setup.and_then(|()| handler(stream)) {
                    // Resets at the end of a run are expected (clients just
                    // drop their sockets); anything else is worth a line.
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::UnexpectedEof
                    ) {
                        eprintln!("bench backend {name}: connection failed: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("bench backend {name}: cannot spawn a connection thread: {e}");
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
