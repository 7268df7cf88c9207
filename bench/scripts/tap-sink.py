#!/usr/bin/env python3
"""tap-sink.py - the cheapest tap client there is, for tap-cost.sh.

Opens one Tap.Observe call (HTTP/2 written from the frames up: HPACK
literals, no library), with the largest flow-control windows HTTP/2 allows,
so it never has to send a WINDOW_UPDATE for the length of a benchmark
round, and then only reads and throws the bytes away in 1 MiB reads.

A tap client on another machine costs the proxy's machine nothing; on the
2-core benchmark machine, the client shares a core with the load
generator, and a heavier client (curl, which parses every frame and keeps
windows open with WINDOW_UPDATEs) takes CPU from it, so the proxy is
driven differently while a tap runs. This one takes next to none.

Usage: tap-sink.py HOST:PORT OBSERVE_FILE
OBSERVE_FILE: the call's body (a gRPC frame of an ObserveRequest).
Runs until killed or the call ends.
"""
import socket
import struct
import sys

MAX_WINDOW = 0x7FFFFFFF


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream) + payload


def literal(name, value):
    """An HPACK literal without indexing, new name (lengths < 127)."""
    return bytes([0, len(name)]) + name + bytes([len(value)]) + value


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    body = open(sys.argv[2], "rb").read()
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    # SETTINGS: ENABLE_PUSH (2) = 0, INITIAL_WINDOW_SIZE (4) = the largest.
    out += frame(4, 0, 0, struct.pack(">HIHI", 2, 0, 4, MAX_WINDOW))
    # The connection's window: from 65,535 to the largest.
    out += frame(8, 0, 0, struct.pack(">I", MAX_WINDOW - 65535))
    block = b"\x83\x86"  # :method POST, :scheme http (static table)
    block += bytes([0x04, 33]) + b"/io.linkerd.proxy.tap.Tap/Observe"
    block += bytes([0x01, 8]) + b"tap.test"
    block += literal(b"content-type", b"application/grpc")
    block += literal(b"te", b"trailers")
    out += frame(1, 4, 1, block)  # HEADERS, END_HEADERS
    out += frame(0, 1, 1, body)  # DATA, END_STREAM
    # (The server's SETTINGS are acknowledged once, after they come.)
    s.sendall(out)
    acked = False
    while True:
        data = s.recv(1 << 20)
        if not data:
            return
        if not acked:
            s.sendall(frame(4, 1, 0, b""))  # SETTINGS ACK
            acked = True


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, BrokenPipeError, ConnectionResetError):
        pass
