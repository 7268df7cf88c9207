"""A hostile HTTP/2 origin (h2c), for ringmesh's upstream defence tests
(Debian python3-h2 reads the requests; the floods are written frame by
frame).

  h2_hostile_origin.py SECONDS

Listens on 127.0.0.1, an ephemeral port, and prints it ("port N", as
every line here, on stderr). Each
request's path names what the origin does once it has it: /ping (a PING
flood), /settings (SETTINGS), /continuation (the response's HEADERS and
then CONTINUATION frames that never end the block), /priority (PRIORITY
frames), /empty-data (empty DATA frames), /unknown (frames of an unknown
type), /interim (informational 100 heads without end), /window-update
(connection WINDOW_UPDATEs of 1 for nothing); any other path is
answered 200 "ok". A flood lasts at most SECONDS
on its connection, then the connection is closed. For each flood one line
when it ends:
  <path> goaway <code> after <n> frames   the proxy sent GOAWAY (and closed)
  <path> closed after <n> frames          the proxy closed without GOAWAY
  <path> ran <SECONDS> s                  the flood ran its course
"""
import socket
import struct
import sys
import threading
import time

import h2.config
import h2.connection
import h2.events

from h2_attack import frame, goaway_in


def flood(s, conn, path, stream, seconds):
    """Floods `s` as `path` says; reports how it ended."""
    out = conn.data_to_send()
    one = {
        "/ping": frame(0x6, 0, 0, b"12345678"),
        "/settings": frame(0x4, 0, 0, b""),
        "/continuation": frame(0x9, 0, stream, b""),
        "/priority": frame(0x2, 0, stream, b"\x00\x00\x00\x00\x10"),
        "/empty-data": frame(0x0, 0, stream, b""),
        "/unknown": frame(0xfa, 0, 0, b"abc"),
        "/window-update": frame(0x8, 0, 0, b"\x00\x00\x00\x01"),
        # :status 100 (a literal with the static name :status), END_HEADERS.
        "/interim": frame(0x1, 0x4, stream, b"\x08\x03100"),
    }[path]
    if path == "/continuation":
        # :status 200 (static index 8); END_HEADERS never comes.
        out += frame(0x1, 0, stream, b"\x88")
    elif path == "/empty-data":
        # The response's head, then a body that never comes.
        out += frame(0x1, 0x4, stream, b"\x88")
    batch = one * 64
    # Everything the proxy sends from here on: the frames after the
    # library's own (whose bytes h2 already consumed).
    seen = b""
    s.settimeout(0.001)
    sent, end = 0, time.time() + seconds
    pending = out
    while time.time() < end:
        try:
            n = s.send(pending or batch)
            if pending:
                pending = pending[n:]
            else:
                sent += 64 if n == len(batch) else 0
                if n < len(batch):
                    # Keep frames whole: send the rest before the next batch.
                    pending = batch[n:]
        except socket.timeout:
            pass
        except OSError:
            break
        try:
            data = s.recv(65536)
            if not data:
                break
            seen += data
        except socket.timeout:
            pass
        except OSError:
            break
    else:
        print(f"{path} ran {seconds} s", file=sys.stderr, flush=True)
        return
    # Whatever the proxy wrote before it closed.
    s.settimeout(1)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            seen += data
    except OSError:
        pass
    code = goaway_in(seen)
    if code is None:
        print(f"{path} closed after {sent} frames", file=sys.stderr, flush=True)
    else:
        print(f"{path} goaway {code} after {sent} frames", file=sys.stderr, flush=True)


def serve(s, seconds):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    path = dict((k.decode(), v.decode()) for k, v in ev.headers).get(":path", "")
                    if path in ("/ping", "/settings", "/continuation", "/priority", "/empty-data", "/unknown", "/interim", "/window-update"):
                        flood(s, conn, path, ev.stream_id, seconds)
                        s.close()
                        return
                    conn.send_headers(ev.stream_id, [(":status", "200")])
                    conn.send_data(ev.stream_id, b"ok", end_stream=True)
            s.sendall(conn.data_to_send())
    except OSError:
        return


def main():
    seconds = float(sys.argv[1])
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    print(f"port {ls.getsockname()[1]}", file=sys.stderr, flush=True)
    while True:
        s, _ = ls.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(s, seconds), daemon=True).start()


main()
