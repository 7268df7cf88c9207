"""Random HTTP/1 on both sides of the proxy, for robustness tests.

origin SEED: a hostile HTTP/1 upstream on 127.0.0.1 (port printed on
stderr as "port N"). For each request head it reads (and the body it
can find) it answers at random: whole responses with a content-length,
chunked ones (trailers, chunk extensions, sizes that lie or are not hex),
close-delimited bodies, 1xx before the answer (and 101 with bytes after
it), 204/304/HEAD answers carrying a body, two differing content-lengths,
content-length with chunked, bytes past the response, a head or a body
cut off, obs-folded and over-long fields, HTTP/1.0, bare LF, garbage, a
short silence, answers before the request's body; and sometimes drops
the connection. Runs until killed.

clients ADDR SECONDS SEED: six threads opening connections to the proxy
at ADDR for SECONDS, each sending one to three pipelined requests drawn
from a menu (GET, HEAD, OPTIONS, POSTs with bodies of content-length or
chunked, short, long or malformed; Expect: 100-continue; WebSocket and
h2c upgrades; CONNECT; smuggling shapes; many fields; garbage; bytes
dribbled), reading for up to 0.2 s and dropping the connection.
Prints "connections N" on stderr at the end.
"""
import socket
import time

from chaos_util import main


def chunked(r, n):
    out = b""
    while n > 0:
        k = min(n, r.choice([1, 10, 1000, 20000]))
        ext = r.choice([b"", b";a=b", b";" + b"x" * 200])
        out += b"%x%s\r\n" % (k, ext) + b"c" * k + b"\r\n"
        n -= k
    return out


def answer(r):
    """One random answer: (bytes, close the connection after)."""
    n = r.choice([0, 1, 5, 100, 5000, 70000])
    k = r.randint(0, 27)
    if k == 0:
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n + b"o" * n, False
    if k == 1:
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(r, n) + b"0\r\n\r\n", False
    if k == 2:
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n" + chunked(r, n) + b"0\r\nx-t: 1\r\n\r\n", False
    if k == 3:
        return b"HTTP/1.1 200 OK\r\n\r\n" + b"u" * n, True
    if k == 4:
        return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", False
    if k == 5:
        return b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n" + b"\x81\x02hi" * r.randint(0, 50), True
    if k == 6:
        return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n" % (r.choice([204, 304]), n) + b"x" * n, False
    if k == 7:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!", False
    if k == 8:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", False
    if k == 9:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA BYTES HTTP/1.1 200 OK\r\n\r\n", False
    if k == 10:
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-a: b\r\n\r\n" % n
        return head[: r.randint(0, len(head) - 1)], True
    if k == 11:
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (n + 10) + b"o" * n, True
    if k == 12:
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(r, n)[: r.randint(0, n + 5)], True
    if k == 13:
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + r.choice([b"zz\r\n", b"-1\r\n", b"ffffffffffffffffff\r\n", b"5\r\nhelloXX"]), True
    if k == 14:
        return b"HTTP/1.1 200 OK\r\nx-fold: a\r\n b\r\ncontent-length: 0\r\n\r\n", False
    if k == 15:
        return b"HTTP/1.1 200 OK\r\nx-big: " + b"v" * r.choice([100, 70000]) + b"\r\ncontent-length: 0\r\n\r\n", False
    if k == 16:
        return b"HTTP/1.0 200 OK\r\n\r\n" + b"t" * n, True
    if k == 17:
        return b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", False
    if k == 18:
        return bytes(r.randint(0, 255) for _ in range(r.randint(1, 200))), True
    if k == 19:
        return b"HTTP/1.1 200\r\ncontent-length: 1\r\n\r\n1", False
    if k == 20:
        return b"HTTP/1.1 999 Odd\r\ncontent-length: 0\r\n\r\n", False
    if k == 21:
        return b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", True
    if k == 22:
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n" + b"g" * n, True
    if k == 23:
        return b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % n + b"o" * n, True
    if k == 24:
        return b"HTTP/1.1 200 OK\r\n" + b"".join(b"f%d: v\r\n" % i for i in range(r.choice([10, 200, 2000]))) + b"content-length: 0\r\n\r\n", False
    if k == 25:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n", True
    if k == 26:
        return b"", True
    return b"HTTP/1.1 500 Boom\r\ncontent-length: 3\r\n\r\nbad", r.random() < 0.5


def send(s, out, dribble, pieces):
    """Sends `out` at once, or dribbled: in `pieces` with pauses between."""
    if not dribble:
        s.sendall(out)
        return
    step = max(1, len(out) // pieces)
    for i in range(0, len(out), step):
        s.sendall(out[i:i + step])
        time.sleep(0.01)


def read_head(c, buf):
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            return None, buf
        buf += d
        if len(buf) > 1 << 20:
            return None, buf
    i = buf.index(b"\r\n\r\n") + 4
    return buf[:i], buf[i:]


def skip_body(c, head, rest):
    """Drops the request's body (as far as it can be found) from `rest`."""
    h = head.lower()
    if b"transfer-encoding: chunked" in h:
        deadline = time.time() + 0.5
        while b"0\r\n\r\n" not in rest and time.time() < deadline:
            d = c.recv(65536)
            if not d:
                break
            rest += d
        i = rest.find(b"0\r\n\r\n")
        return rest[i + 5:] if i >= 0 else b""
    i = h.find(b"content-length:")
    if i >= 0:
        try:
            n = int(h[i + 15:].split(b"\r\n", 1)[0].strip())
        except ValueError:
            return b""
        while len(rest) < n:
            d = c.recv(65536)
            if not d:
                break
            rest += d
        return rest[n:]
    return rest


def serve(r, c):
    c.settimeout(2)
    buf = b""
    try:
        while True:
            head, buf = read_head(c, buf)
            if head is None:
                return
            if r.random() < 0.9:
                buf = skip_body(c, head, buf)
            if r.random() < 0.05:
                time.sleep(r.choice([0.05, 0.3]))
            out, close = answer(r)
            send(c, out, r.random() < 0.1, 5)
            if close or r.random() < 0.05:
                return
    except OSError:
        pass
    finally:
        c.close()


def request(r):
    k = r.randint(0, 21)
    n = r.choice([0, 1, 100, 5000, 70000])
    host = b"Host: chaos.test\r\n"
    if k == 0:
        return b"GET /a HTTP/1.1\r\n" + host + b"\r\n"
    if k == 1:
        return b"HEAD /h HTTP/1.1\r\n" + host + b"\r\n"
    if k == 2:
        return b"POST /p HTTP/1.1\r\n" + host + b"content-length: %d\r\n\r\n" % n + b"p" * n
    if k == 3:
        return b"POST /c HTTP/1.1\r\n" + host + b"transfer-encoding: chunked\r\n\r\n" + chunked(r, n) + b"0\r\n\r\n"
    if k == 4:
        return b"POST /short HTTP/1.1\r\n" + host + b"content-length: %d\r\n\r\n" % (n + 10) + b"p" * n
    if k == 5:
        return b"POST /e HTTP/1.1\r\n" + host + b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % n + (b"p" * n if r.random() < 0.5 else b"")
    if k == 6:
        return b"GET /ws HTTP/1.1\r\n" + host + b"connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n" + b"\x81\x82abcdxx" * r.randint(0, 5)
    if k == 7:
        return b"GET /h2c HTTP/1.1\r\n" + host + b"connection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    if k == 8:
        return b"CONNECT chaos.test:443 HTTP/1.1\r\n" + host + b"\r\n" + b"tunnel bytes"
    if k == 9:
        return b"POST /s HTTP/1.1\r\n" + host + b"content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + host + b"\r\n"
    if k == 10:
        return b"GET /f HTTP/1.1\r\n" + host + b"".join(b"x-%d: v\r\n" % i for i in range(r.choice([10, 120, 600]))) + b"\r\n"
    if k == 11:
        return bytes(r.randint(0, 255) for _ in range(r.randint(1, 300)))
    if k == 12:
        return b"GET /" + b"u" * r.choice([100, 9000, 70000]) + b" HTTP/1.1\r\n" + host + b"\r\n"
    if k == 13:
        return b"GET /old HTTP/1.0\r\n\r\n"
    if k == 14:
        return b"OPTIONS * HTTP/1.1\r\n" + host + b"\r\n"
    if k == 15:
        return b"POST /bad HTTP/1.1\r\n" + host + b"transfer-encoding: chunked\r\n\r\n" + r.choice([b"zz\r\n", b"ffffffffffffffffffff\r\n", b"5\r\nhelloXX\r\n", b"5;" + b"e" * 5000 + b"\r\n"])
    if k == 16:
        return b"GET /lf HTTP/1.1\nHost: chaos.test\n\n"
    if k == 17:
        return b"GET /fold HTTP/1.1\r\n" + host + b"x-a: b\r\n c\r\n\r\n"
    if k == 18:
        return b"POST /te HTTP/1.1\r\n" + host + b"transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    if k == 19:
        return b"GET http://chaos.test/abs HTTP/1.1\r\n" + host + b"\r\n"
    if k == 20:
        return b"GET /trailers HTTP/1.1\r\n" + host + b"te: trailers\r\n\r\n"
    return b"DELETE /d HTTP/1.1\r\n" + host + b"content-length: 0\r\nconnection: close\r\n\r\n"


def converse(r, s):
    out = b"".join(request(r) for _ in range(r.randint(1, 3)))
    send(s, out, r.random() < 0.2, 4)
    if r.random() < 0.2:
        s.shutdown(socket.SHUT_WR)


main(serve, converse)
