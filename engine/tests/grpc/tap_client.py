"""A Linkerd tap client for ringmesh's tap tests (Debian python3-grpcio,
python3-protobuf): calls io.linkerd.proxy.tap.Tap/Observe, as Linkerd's
tap controller does, and prints what comes back.

The message types come from a descriptor set the test makes with protoc
from linkerd2-proxy-api's tap.proto (--descriptors): no generated code is
kept anywhere.

  tap_client.py --descriptors tap.pb --addr HOST:PORT --request JSON
      [--timeout SECONDS] [--ca CA.pem --cert CERT.pem --key KEY.pem --server-name NAME]

With --ca (and optionally --cert/--key) the call goes over TLS (mutual TLS
with a certificate), the server verified as --server-name.

--request is the ObserveRequest in protobuf's JSON mapping, e.g.
  {"limit": 5, "match": {"http": {"path": {"prefix": "/api"}}}}

Prints "open" once the call is made, then one line per TapEvent (its JSON
mapping, on one line), then "status CODE MESSAGE" when the call ends.
"""
import argparse
import json

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

PACKAGE = "io.linkerd.proxy.tap"


def messages(path):
    files = descriptor_pb2.FileDescriptorSet.FromString(open(path, "rb").read())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    factory = message_factory.MessageFactory(pool)

    def get(name):
        return factory.GetPrototype(pool.FindMessageTypeByName(PACKAGE + "." + name))

    return get("ObserveRequest"), get("TapEvent")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--descriptors", required=True)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--request", required=True)
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--server-name")
    args = ap.parse_args()
    Request, Event = messages(args.descriptors)
    req = json_format.Parse(args.request, Request())
    if args.ca:
        read = lambda p: open(p, "rb").read() if p else None
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca), private_key=read(args.key), certificate_chain=read(args.cert)
        )
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(args.addr, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.addr)
    observe = channel.unary_stream(
        "/%s.Tap/Observe" % PACKAGE,
        request_serializer=Request.SerializeToString,
        response_deserializer=Event.FromString,
    )
    call = observe(req, timeout=args.timeout)
    print("open", flush=True)
    try:
        for ev in call:
            line = json.dumps(json_format.MessageToDict(ev), sort_keys=True)
            print(line, flush=True)
        print("status %s %s" % (call.code().value[0], call.details() or ""), flush=True)
    except grpc.RpcError as e:
        print("status %s %s" % (e.code().value[0], e.details() or ""), flush=True)


if __name__ == "__main__":
    main()
