"""What h1_chaos.py and h2_chaos.py share: a seeded random source for an
origin's threads, the origin's accept loop, and the clients' loop.

Both scripts take the same arguments:
  origin SEED                  listen on 127.0.0.1, print "port N" on stderr
  clients ADDR SECONDS SEED    six threads of connections for SECONDS, then
                               print "connections N" on stderr
"""
import random
import socket
import sys
import threading
import time


class Rand:
    """A seeded random source shared by threads."""

    def __init__(self, seed):
        self.r = random.Random(seed)
        self.lock = threading.Lock()

    def __getattr__(self, name):
        f = getattr(self.r, name)

        def locked(*a):
            with self.lock:
                return f(*a)
        return locked


def origin(seed, serve):
    """Accepts for ever, each connection served by serve(r, conn) on its
    own thread."""
    r = Rand(seed)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(512)
    print("port", ls.getsockname()[1], file=sys.stderr, flush=True)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=serve, args=(r, c), daemon=True).start()


def client(addr, seconds, seed, counts, converse):
    """Connections to ADDR for SECONDS: converse(r, sock) sends on each,
    which is then read for up to 0.2 s and dropped."""
    r = random.Random(seed)
    host, port = addr.rsplit(":", 1)
    end = time.time() + seconds
    while time.time() < end:
        s = None
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
            s.settimeout(0.2)
            converse(r, s)
            until = time.time() + r.choice([0, 0.05, 0.2])
            while time.time() < until:
                if not s.recv(65536):
                    break
        except OSError:
            pass
        finally:
            if s is not None:
                s.close()
        counts.append(1)


def main(serve, converse):
    if sys.argv[1] == "origin":
        origin(int(sys.argv[2]), serve)
        return
    addr, seconds, seed = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    counts = []
    threads = [threading.Thread(target=client, args=(addr, seconds, seed * 10 + i, counts, converse))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("connections", len(counts), file=sys.stderr, flush=True)
