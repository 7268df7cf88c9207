"""A Linkerd Identity service for ringmesh's Certify tests (Debian
python3-grpcio, python3-protobuf, python3-cryptography).

Signs the CSR of each Certify call with a test CA, for the identity the
call asks for, as Linkerd's identity controller does: the leaf (DER), the
intermediates (DER) and valid_until. The message types come from a
descriptor set the test makes with protoc from linkerd2-proxy-api's
identity.proto (--descriptors): no generated code is kept anywhere.

  identity_server.py --descriptors identity.pb --ca-cert ca.pem --ca-key ca-key.pem
      [--listen 127.0.0.1:0] [--lifetime SECONDS] [--fail-first N]
      [--hang-first N] [--name NAME] [--intermediate]

Prints "ready HOST:PORT" once it listens, then one line a call:
  "certify identity=NAME token=TOKEN csr=HEX" (a call answered),
  "failed" (--fail-first), "hung" (--hang-first: no answer until the
  client gives up). Serves until killed or until stdin closes.
"""
import argparse
import calendar
import datetime
import sys
import threading
from concurrent import futures

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "io.linkerd.proxy.identity.Identity"


def messages(path):
    files = descriptor_pb2.FileDescriptorSet.FromString(open(path, "rb").read())
    # A pool of its own: the crate's google/protobuf/timestamp/timestamp.proto
    # defines google.protobuf.Timestamp again under another file name.
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    factory = message_factory.MessageFactory(pool)

    def get(name):
        return factory.GetPrototype(pool.FindMessageTypeByName(SERVICE.rsplit(".", 1)[0] + "." + name))

    return get("CertifyRequest"), get("CertifyResponse")


def now():
    return datetime.datetime.now(datetime.timezone.utc)


class Issuer:
    def __init__(self, cert_pem, key_pem, intermediate):
        self.cert = x509.load_pem_x509_certificate(cert_pem)
        self.key = serialization.load_pem_private_key(key_pem, password=None)
        self.chain = []
        if intermediate:
            # Leaves are signed by an intermediate CA the root signs; the
            # response carries it.
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ringmesh test intermediate")])
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(self.cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now() - datetime.timedelta(minutes=5))
                .not_valid_after(now() + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                    critical=True,
                )
                .sign(self.key, hashes.SHA256())
            )
            self.chain = [cert.public_bytes(serialization.Encoding.DER)]
            self.cert, self.key = cert, key

    def sign(self, csr_der, name, lifetime):
        csr = x509.load_der_x509_csr(csr_der)
        if not csr.is_signature_valid:
            raise ValueError("bad CSR signature")
        not_after = now() + datetime.timedelta(seconds=lifetime)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now() - datetime.timedelta(seconds=10))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        # X.509 times are whole seconds: valid_until is the certificate's own.
        return cert.public_bytes(serialization.Encoding.DER), self.chain, calendar.timegm(cert.not_valid_after.utctimetuple())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--descriptors", required=True)
    p.add_argument("--ca-cert", required=True)
    p.add_argument("--ca-key", required=True)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--lifetime", type=float, default=3600)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--hang-first", type=int, default=0)
    p.add_argument("--name", help="sign for this name, not the one asked for")
    p.add_argument("--intermediate", action="store_true")
    args = p.parse_args()

    Request, Response = messages(args.descriptors)
    issuer = Issuer(open(args.ca_cert, "rb").read(), open(args.ca_key, "rb").read(), args.intermediate)
    lock = threading.Lock()
    calls = {"n": 0}

    def say(line):
        with lock:
            print(line, flush=True)

    def certify(req, context):
        with lock:
            n = calls["n"]
            calls["n"] += 1
        if n < args.fail_first:
            say("failed")
            context.abort(grpc.StatusCode.UNAVAILABLE, "asked to fail (call %d)" % (n + 1))
        if n < args.fail_first + args.hang_first:
            say("hung")
            gone = threading.Event()
            context.add_callback(gone.set)
            gone.wait()
            return Response()
        say("certify identity=%s token=%s csr=%s" % (req.identity, req.token.decode(), req.certificate_signing_request.hex()))
        leaf, chain, valid_until = issuer.sign(req.certificate_signing_request, args.name or req.identity, args.lifetime)
        resp = Response(leaf_certificate=leaf, intermediate_certificates=chain)
        resp.valid_until.seconds = valid_until
        return resp

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(
        certify, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Certify": handler}),))
    host = args.listen.rsplit(":", 1)[0]
    port = server.add_insecure_port(args.listen)
    if not port:
        sys.exit("cannot listen on " + args.listen)
    server.start()
    say("ready %s:%d" % (host, port))
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
