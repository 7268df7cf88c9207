"""Random HTTP/2 on both sides of the proxy, for robustness tests.

origin SEED: a hostile upstream on 127.0.0.1 (port printed on stderr as
"port N"). It answers the streams it is sent with random frame sequences:
heads (interim, with END_STREAM or not, with a content-length, trailers
without END_STREAM), DATA of random sizes (padded, past windows),
RST_STREAMs, WINDOW_UPDATEs (0, overflowing), SETTINGS (window sizes,
frame size, stream limits), GOAWAYs, PINGs, PUSH_PROMISEs, lone
CONTINUATIONs, unknown frames, PRIORITY; and sometimes drops the
connection. Runs until killed.

clients ADDR SECONDS SEED: six threads opening connections to the proxy
at ADDR for SECONDS: GETs and POSTs with bodies of random sizes, ended,
left open or reset, windows of 0 to 64 KiB, WINDOW_UPDATEs (overflowing
too), early resets; each connection read for up to 0.2 s and dropped.
Prints "connections N" on stderr at the end.
"""
import struct

from chaos_util import main


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


HEADS = [b"\x88", b"\x08\x03103", b"\x89", b"\x88\x0f\x0d\x013", b"\x00\x03x-a\x01b"]


def answer(r, sid, opened):
    out = b""
    for _ in range(r.randint(1, 8)):
        k = r.random()
        t = r.choice(opened + [sid])
        if k < 0.25:
            out += frame(1, r.choice([4, 5, 0x24, 1]), t, r.choice(HEADS))
        elif k < 0.45:
            if r.random() < 0.2:
                out += frame(0, r.choice([8, 9]), t, b"\x05" + b"d" * r.randint(0, 3000) + b"\0" * 5)
            else:
                out += frame(0, r.choice([0, 1]), t, b"d" * r.randint(0, 20000))
        elif k < 0.55:
            out += frame(3, 0, t, struct.pack(">I", r.choice([0, 1, 2, 7, 8, 11])))
        elif k < 0.65:
            out += frame(8, 0, r.choice([0, t]), struct.pack(">I", r.choice([0, 1, 100, 65535, 2**31 - 1])))
        elif k < 0.72:
            out += frame(4, 0, 0, struct.pack(">HI", r.choice([1, 3, 4, 5, 6]),
                                              r.choice([0, 1, 100, 16384, 65535, 2**31 - 1])))
        elif k < 0.76:
            out += frame(7, 0, 0, struct.pack(">II", r.choice([0, t, 2**31 - 1]), r.choice([0, 2, 11])))
        elif k < 0.8:
            out += frame(6, 0, 0, b"12345678")
        elif k < 0.84:
            out += frame(5, 4, t, struct.pack(">I", t + 1) + b"\x82")
        elif k < 0.88:
            out += frame(9, 4, t, b"\x88")
        elif k < 0.92:
            out += frame(r.randint(10, 200), 0, t, b"x")
        else:
            out += frame(2, 0, t, struct.pack(">IB", 0, 1))
    return out


def serve(r, c):
    f = c.makefile("rb")
    c.settimeout(5)
    try:
        if len(f.read(24)) < 24:
            return
        settings = struct.pack(">HI", 4, r.choice([0, 100, 65535, 1 << 20])) if r.random() < 0.5 else b""
        c.sendall(frame(4, 0, 0, settings))
        opened = []
        while True:
            head = f.read(9)
            if len(head) < 9:
                return
            f.read(int.from_bytes(head[:3], "big"))
            sid = int.from_bytes(head[5:9], "big") & 0x7fffffff
            if head[3] == 4 and not head[4] & 1:
                c.sendall(frame(4, 1, 0, b""))
            elif head[3] in (0, 1) and r.random() < 0.5:
                if head[3] == 1:
                    opened.append(sid)
                c.sendall(answer(r, sid, opened))
            if r.random() < 0.01:
                return
    except OSError:
        return
    finally:
        c.close()


def converse(r, s):
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    out += frame(4, 0, 0, struct.pack(">HI", 4, r.choice([0, 1000, 65535]))) + frame(4, 1, 0, b"")
    sid = 1
    for _ in range(r.randint(1, 6)):
        post = r.random() < 0.6
        out += frame(1, 4 if post else 5, sid, (b"\x83" if post else b"\x82") + b"\x86\x84\x01\x04test")
        if post:
            for _ in range(r.randint(0, 8)):
                out += frame(0, 0, sid, b"u" * r.choice([1, 1000, 16384]))
            if r.random() < 0.5:
                out += frame(0, 1, sid, b"")
            elif r.random() < 0.5:
                out += frame(3, 0, sid, struct.pack(">I", 8))
        if r.random() < 0.3:
            out += frame(8, 0, sid, struct.pack(">I", r.choice([1, 65535, 2**31 - 1])))
        if r.random() < 0.2:
            out += frame(3, 0, sid, struct.pack(">I", 8))
        sid += 2
    s.sendall(out)


main(serve, converse)
