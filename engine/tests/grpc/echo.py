"""gRPC server and client for ringmesh's HTTP/2 tests (Debian python3-grpcio).

No generated code: methods carry raw bytes (no serializers).

  echo.py serve [ADDR]     listens on ADDR (default 127.0.0.1:0), prints the
                           port, serves until stdin closes
  echo.py client ADDR      runs every call type against ADDR, exits 1 on the first failure
"""
import queue
import sys
from concurrent import futures

import grpc

SERVICE = "ringmesh.test.Echo"


def unary(request, context):
    context.set_trailing_metadata((("x-trailer", "unary"),))
    return b"echo:" + request


def fail(request, context):
    # A non-OK status with details and trailing metadata.
    context.set_trailing_metadata((("x-why", "asked-to-fail"),))
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def broken(request, context):
    # A status linkerd2-proxy counts as a failure (NOT_FOUND is not one).
    context.abort(grpc.StatusCode.INTERNAL, "broken")


def denied(request, context):
    # A failure for linkerd2-proxy's gRPC classification.
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "not you")


def server_stream(request, context):
    n = int(request.decode())
    for i in range(n):
        yield b"item-%d" % i


def items(request, context):
    # Protobuf-shaped, for ringmesh's own gRPC client (engine/src/grpc.rs):
    # the request is a google.protobuf.UInt32Value (0x08 and the count, one
    # varint byte; empty for 0), each reply a BytesValue holding "item-N".
    n = request[1] if len(request) > 1 else 0
    for i in range(n):
        s = b"item-%d" % i
        yield b"\x0a" + bytes([len(s)]) + s


def client_stream(request_iterator, context):
    total = 0
    count = 0
    for m in request_iterator:
        total += len(m)
        count += 1
    return b"%d messages, %d bytes" % (count, total)


def bidi(request_iterator, context):
    for m in request_iterator:
        yield m[::-1]


def serve(addr):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Broken": grpc.unary_unary_rpc_method_handler(broken),
        "Denied": grpc.unary_unary_rpc_method_handler(denied),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Items": grpc.unary_stream_rpc_method_handler(items),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(addr)
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.stop(0)


def check(cond, what):
    if not cond:
        print("FAIL: " + what, flush=True)
        sys.exit(1)
    print("ok: " + what, flush=True)


def client(addr):
    with grpc.insecure_channel(addr) as ch:
        m = "/%s/" % SERVICE
        resp, call = ch.unary_unary(m + "Unary").with_call(b"hi", timeout=10)
        check(resp == b"echo:hi", "unary response")
        check(("x-trailer", "unary") in call.trailing_metadata(), "unary trailers")
        check(call.code() == grpc.StatusCode.OK, "unary status OK")

        try:
            ch.unary_unary(m + "Fail")(b"x", timeout=10)
            check(False, "Fail raised")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, "non-OK status passed through (%s)" % e.code())
            check(e.details() == "no such thing", "status details passed through")
            check(("x-why", "asked-to-fail") in e.trailing_metadata(), "error trailers passed through")

        try:
            ch.unary_unary(m + "Broken")(b"x", timeout=10)
            check(False, "Broken raised")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INTERNAL, "INTERNAL passed through (%s)" % e.code())

        try:
            ch.unary_unary(m + "Denied")(b"x", timeout=10)
            check(False, "Denied raised")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED passed through (%s)" % e.code())

        items = list(ch.unary_stream(m + "ServerStream")(b"50", timeout=10))
        check(items == [b"item-%d" % i for i in range(50)], "server streaming, 50 messages in order")

        big = [bytes([i % 256]) * 65536 for i in range(64)]  # 4 MiB in 64 messages
        resp = ch.stream_unary(m + "ClientStream")(iter(big), timeout=20)
        check(resp == b"64 messages, 4194304 bytes", "client streaming, 4 MiB")

        # Bidi in lock step: each reply must arrive before the next message
        # is sent, so a proxy that waits for the whole request deadlocks.
        q = queue.Queue()
        out = ch.stream_stream(m + "Bidi")(iter(q.get, None), timeout=10)
        replies = []
        for i in range(20):
            msg = b"ping-%d" % i
            q.put(msg)
            replies.append(next(out) == msg[::-1])
        check(all(replies), "bidi: 20 replies, each before the next message was sent")
        q.put(None)
        check(list(out) == [], "bidi ends cleanly")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:0")
    else:
        client(sys.argv[2])
