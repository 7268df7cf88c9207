//! TCP echo: the server writes back whatever it reads; the client sends a
//! fixed-size message and waits for all of it to come back.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::load::RoundTrip;

/// Echoes until the peer closes.
pub fn serve(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

/// One connection sending `size`-byte messages.
pub struct EchoClient {
    stream: TcpStream,
    message: Vec<u8>,
    reply: Vec<u8>,
}

impl EchoClient {
    pub fn connect(addr: SocketAddr, size: usize) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        crate::tune(&stream)?;
        // Not text, not an HTTP method: the proxy's detection (if it runs)
        // sees opaque bytes.
        let message = (0..size).map(|i| (i % 251) as u8).collect();
        Ok(Self {
            stream,
            message,
            reply: vec![0; size],
        })
    }
}

impl RoundTrip for EchoClient {
    fn round_trip(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.message)?;
        self.stream.read_exact(&mut self.reply)?;
        if self.reply != self.message {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "echo reply differs from the message",
            ));
        }
        Ok(())
    }
}
