"""A fake Linkerd control plane for mesh interoperability tests.

One plaintext gRPC server (Debian's python3-grpcio, asyncio) that answers a
sidecar proxy -- linkerd2-proxy or ringmesh -- with the real
linkerd2-proxy-api messages:

  io.linkerd.proxy.identity.Identity/Certify
      verifies the CSR, signs a leaf for the requested identity (DNS SAN =
      identity) with the CA given as --ca-cert/--ca-key, returns leaf DER +
      valid_until. Fails on demand (--identity-fail-first N,
      --identity-fail-file PATH) for renewal and outage tests.
  io.linkerd.proxy.destination.Destination/Get, /GetProfile
  io.linkerd.proxy.outbound_policy.OutboundPolicies/Get, /Watch
  io.linkerd.proxy.inbound.InboundServerPolicies/GetPort, /WatchPort
      from the JSON file --config (re-read when it changes; open streams get
      the difference). Streams stay open until the client leaves or SIGTERM.

What it answers mirrors what Linkerd's destination and policy controllers
send (linkerd2's policy-controller/grpc/src/{outbound,inbound}.rs and
controller/api/destination/endpoint_translator.go); docs/MESH-TESTING.md
describes the config format. It is no Kubernetes model: no service
accounts, no token review, no routes beyond the defaults.

The _pb2 modules are generated at start-up by Debian's protoc, into a
temporary directory removed once they are imported, from the .proto files
the linkerd2-proxy-api crate ships (found through the workspace's Cargo.lock
in the cargo registry, or `cargo metadata`, or --proto-dir).

Prints "ready <addr>" on stdout once listening and one line per RPC.
"""

import argparse
import asyncio
import datetime
import glob
import importlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

API_CRATE = "linkerd2-proxy-api"
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def log(msg):
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        # The test reading our output is gone; the orphan watch stops us.
        pass


async def orphan_watch(stop):
    """Stops the server when the process that started it is gone: a test
    killed before it could stop us (a timeout) must not leave a fake
    behind, busy on a closed pipe."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            stop.set()
            return
        await asyncio.sleep(0.5)


# --- protos -----------------------------------------------------------------


def crate_version():
    """The linkerd2-proxy-api version the workspace's Cargo.lock pins."""
    try:
        with open(os.path.join(REPO_ROOT, "Cargo.lock")) as f:
            lock = f.read()
    except OSError:
        return None
    m = re.search(r'name = "%s"\nversion = "([^"]+)"' % re.escape(API_CRATE), lock)
    return m.group(1) if m else None


def find_proto_dir():
    version = crate_version()
    cargo_home = os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")
    if version:
        hits = sorted(
            glob.glob(os.path.join(cargo_home, "registry", "src", "*", "%s-%s" % (API_CRATE, version), "proto"))
        )
        if hits:
            return hits[0]
    # Not unpacked where we looked: ask cargo where the crate lives.
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for pkg in json.loads(out)["packages"]:
        if pkg["name"] == API_CRATE:
            return os.path.join(os.path.dirname(pkg["manifest_path"]), "proto")
    raise SystemExit("fake_cp: cannot find the %s crate's proto directory" % API_CRATE)


def load_protos(proto_dir):
    """Generates the _pb2 modules into a temp dir and imports them.

    The crate ships its own copies of duration.proto and of timestamp.proto
    (under google/protobuf/timestamp/); the generated code must use the
    python protobuf package's well-known types instead, or the descriptor
    pool sees google.protobuf.Timestamp twice. So the protos are copied and
    the timestamp import pointed at the standard path.

    The temp dir is removed as soon as the modules are imported (they are
    held in memory from then on): the tests stop this process with SIGKILL,
    which no exit handler survives.
    """
    with tempfile.TemporaryDirectory(prefix="fake-cp-") as tmp:
        return generate_and_import(proto_dir, tmp)


def generate_and_import(proto_dir, tmp):
    src = os.path.join(tmp, "proto")
    out = os.path.join(tmp, "gen")
    os.makedirs(os.path.join(src, "google", "protobuf"))
    os.makedirs(out)
    names = [n for n in sorted(os.listdir(proto_dir)) if n.endswith(".proto")]
    for n in names:
        with open(os.path.join(proto_dir, n)) as f:
            text = f.read()
        text = text.replace('"google/protobuf/timestamp/timestamp.proto"', '"google/protobuf/timestamp.proto"')
        with open(os.path.join(src, n), "w") as f:
            f.write(text)
    shutil.copy(os.path.join(proto_dir, "google", "protobuf", "duration.proto"), os.path.join(src, "google", "protobuf"))
    shutil.copy(
        os.path.join(proto_dir, "google", "protobuf", "timestamp", "timestamp.proto"),
        os.path.join(src, "google", "protobuf", "timestamp.proto"),
    )
    subprocess.run(["protoc", "-I", src, "--python_out", out] + names, check=True)
    sys.path.insert(0, out)
    try:
        return {n[: -len(".proto")]: importlib.import_module(n[: -len(".proto")] + "_pb2") for n in names}
    finally:
        sys.path.remove(out)


# --- helpers ----------------------------------------------------------------


def duration(pb, secs):
    d = pb.duration_pb2.Duration()
    d.FromTimedelta(datetime.timedelta(seconds=secs))
    return d


def ip_address(net, ip):
    ip = ipaddress.ip_address(ip)
    if ip.version == 4:
        return net.IPAddress(ipv4=int(ip))
    n = int(ip)
    return net.IPAddress(ipv6=net.IPv6(first=n >> 64, last=n & ((1 << 64) - 1)))


def ip_network(net, cidr):
    n = ipaddress.ip_network(cidr)
    return net.IPNetwork(ip=ip_address(net, n.network_address), prefix_len=n.prefixlen)


def tcp_address(net, ip, port):
    return net.TcpAddress(ip=ip_address(net, ip), port=port)


def from_tcp_address(addr):
    if addr.ip.HasField("ipv4"):
        ip = ipaddress.IPv4Address(addr.ip.ipv4)
        return "%s:%d" % (ip, addr.port)
    ip = ipaddress.IPv6Address((addr.ip.ipv6.first << 64) | addr.ip.ipv6.last)
    return "[%s]:%d" % (ip, addr.port)


def split_authority(authority):
    host, _, port = authority.rpartition(":")
    return host.strip("[]"), int(port or 80)


# --- config -----------------------------------------------------------------


class Config:
    """The --config JSON, re-read when its bytes change (not its mtime:
    some filesystems keep whole seconds, and two writes a second apart
    would look the same); `changed` wakes
    every open stream, which recomputes its answer and sends it if it
    differs from the last one."""

    def __init__(self, path, fault_dir=None):
        self.path = path
        self.fault_dir = fault_dir
        self.raw = None
        self.data = {}
        self.changed = asyncio.Condition()
        self.reload()

    def reload(self):
        if not self.path:
            return False
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except OSError as e:
            log("config: cannot read %s: %s" % (self.path, e))
            return False
        if raw == self.raw:
            return False
        try:
            data = json.loads(raw)
        except ValueError as e:
            log("config: keeping the previous config, %s is not valid: %s" % (self.path, e))
            return False
        self.raw, self.data = raw, data
        log("config: loaded %s" % self.path)
        return True

    def fault(self, name, take=False):
        """Whether the fault file `name` exists; `take` removes it (acted
        on once)."""
        if not self.fault_dir:
            return False
        path = os.path.join(self.fault_dir, name)
        if not os.path.exists(path):
            return False
        if take:
            try:
                os.remove(path)
            except OSError:
                return False
        return True

    def pending_faults(self):
        return bool(self.fault_dir) and any(self.fault(n) for n in ("garbage", "reset"))

    async def watch(self, stop):
        while not stop.is_set():
            if self.reload() or self.pending_faults():
                async with self.changed:
                    self.changed.notify_all()
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

    async def wait_changed(self):
        async with self.changed:
            await self.changed.wait()

    def destination(self, authority):
        """The entry for a target: by its key (the IP:port or name:port the
        proxy looks up), else by the service authority its balancer resolves
        (Destination.Get is asked for that)."""
        dsts = self.data.get("destinations", {})
        if authority in dsts:
            return dsts[authority]
        for key, dst in dsts.items():
            if service_authority(key, dst) == authority:
                return dst
        return None


def service_ref(key, dst):
    """(name, namespace) of the Service an entry stands for."""
    host, _ = split_authority(key)
    name = dst.get("service") or re.sub(r"[^a-z0-9-]", "-", ("svc-" + host).lower()).strip("-")
    return name, dst.get("namespace", "default")


def service_authority(key, dst):
    """The name the balancer resolves: linkerd2-proxy panics ("destination
    must be a nameaddr") on a DestinationGet path that is an IP:port, so an
    IP target gets its Service's name, as the policy controller sends."""
    if dst.get("dst_path"):
        return dst["dst_path"]
    host, port = split_authority(key)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return key
    name, namespace = service_ref(key, dst)
    return "%s.%s.svc.cluster.local:%d" % (name, namespace, port)


async def watch(config, context, answer):
    """Yields answer() now and again whenever the config changes its value,
    until the client goes away. answer() returning None ends the stream."""
    last = None
    while True:
        msg = answer()
        if msg is None:
            return
        wire = msg.SerializeToString(deterministic=True)
        if wire != last:
            last = wire
            yield msg
        await config.wait_changed()


def peer_identity(context):
    """The client certificate's first DNS name, or "plaintext"."""
    auth = context.auth_context() or {}
    names = auth.get("x509_subject_alternative_name") or []
    return names[0].decode() if names else "plaintext"


# --- identity ---------------------------------------------------------------


class NoIdentity:
    async def certify(self, req, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no CA given to this fake control plane")


class Identity:
    def __init__(self, pb, args):
        self.pb = pb
        with open(args.ca_cert, "rb") as f:
            self.ca = x509.load_pem_x509_certificate(f.read())
        with open(args.ca_key, "rb") as f:
            self.ca_key = serialization.load_pem_private_key(f.read(), password=None)
        self.chain = []
        if args.chain:
            with open(args.chain, "rb") as f:
                self.chain = [
                    c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(f.read())
                ]
        self.lifetime = args.cert_lifetime
        self.fail_first = args.identity_fail_first
        self.fail_file = args.identity_fail_file
        self.calls = 0

    async def certify(self, req, context):
        self.calls += 1
        n = self.calls
        token = req.token.decode("utf-8", "replace")
        if n <= self.fail_first:
            log("certify #%d identity=%s token=%s -> UNAVAILABLE (fail-first %d)" % (n, req.identity, token, self.fail_first))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "failing the first %d calls" % self.fail_first)
        if self.fail_file and os.path.exists(self.fail_file):
            log("certify #%d identity=%s token=%s -> UNAVAILABLE (%s exists)" % (n, req.identity, token, self.fail_file))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "identity outage (fail file present)")
        if not req.token:
            log("certify #%d identity=%s -> UNAUTHENTICATED (no token)" % (n, req.identity))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no token")
        try:
            csr = x509.load_der_x509_csr(req.certificate_signing_request)
        except ValueError as e:
            log("certify #%d identity=%s -> INVALID_ARGUMENT (CSR: %s)" % (n, req.identity, e))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid CSR: %s" % e)
        problem = self.check_csr(csr, req.identity)
        if problem:
            log("certify #%d identity=%s -> INVALID_ARGUMENT (%s)" % (n, req.identity, problem))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)

        now = datetime.datetime.now(datetime.timezone.utc)
        not_after = now + datetime.timedelta(seconds=self.lifetime)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, req.identity)]))
            .issuer_name(self.ca.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            # Backdated as Linkerd's issuer does, for clock skew.
            .not_valid_before(now - datetime.timedelta(seconds=20))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(req.identity)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        valid_until = self.pb.timestamp_pb2.Timestamp()
        valid_until.FromDatetime(not_after.replace(tzinfo=None))
        log("certify #%d identity=%s token=%s -> ok valid_until=%s" % (n, req.identity, token, not_after.isoformat()))
        return self.pb.identity.CertifyResponse(
            leaf_certificate=leaf.public_bytes(serialization.Encoding.DER),
            intermediate_certificates=self.chain,
            valid_until=valid_until,
        )

    @staticmethod
    def check_csr(csr, identity):
        if not identity:
            return "no identity requested"
        if not csr.is_signature_valid:
            return "CSR signature does not verify"
        if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
            return "CSR key is not ECDSA"
        try:
            names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = names.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            dns = []
        if identity not in dns:
            return "CSR DNS names %s do not include %s" % (dns, identity)
        return None


# --- destination ------------------------------------------------------------


class Destination:
    def __init__(self, pb, config):
        self.pb = pb
        self.config = config

    def weighted_addr(self, ep):
        d, net = self.pb.destination, self.pb.net
        wa = d.WeightedAddr(
            addr=tcp_address(net, ep["addr"], ep["port"]),
            weight=ep.get("weight", 10000),
            metric_labels=ep.get("labels", {}),
        )
        ident = ep.get("tls_identity")
        if ident:
            wa.tls_identity.dns_like_identity.name = ident
            # The SNI the client sends; normally the identity itself.
            wa.tls_identity.server_name.name = ep.get("server_name", ident)
        hint = ep.get("protocol_hint")
        if hint == "h2":
            wa.protocol_hint.h2.SetInParent()
        elif hint == "opaque":
            wa.protocol_hint.opaque.SetInParent()
        elif hint not in (None, "none"):
            raise ValueError("protocol_hint must be h2, opaque or none, not %r" % hint)
        port = ep.get("opaque_transport_inbound_port")
        if port:
            wa.protocol_hint.opaque_transport.inbound_port = port
        if ep.get("authority_override"):
            wa.authority_override.authority_override = ep["authority_override"]
        # "http2": {"stream_window", "connection_window", "adaptive",
        # "max_frame_size", "max_send_buf_size", "max_concurrent_reset_streams",
        # "keep_alive": {"interval_ms", "timeout_ms", "while_idle"}}
        h2 = ep.get("http2")
        if h2:
            p = wa.http2
            if "stream_window" in h2:
                p.flow_control.initial_stream_window_size = h2["stream_window"]
            if "connection_window" in h2:
                p.flow_control.initial_connection_window_size = h2["connection_window"]
            if h2.get("adaptive"):
                p.flow_control.adaptive_flow_control = True
            for k in ("max_frame_size", "max_send_buf_size", "max_concurrent_reset_streams"):
                if k in h2:
                    setattr(p.internals, k, h2[k])
            ka = h2.get("keep_alive")
            if ka:
                p.keep_alive.interval.CopyFrom(duration(self.pb, ka["interval_ms"] / 1000.0))
                if "timeout_ms" in ka:
                    p.keep_alive.timeout.CopyFrom(duration(self.pb, ka["timeout_ms"] / 1000.0))
                p.keep_alive.while_idle = bool(ka.get("while_idle"))
        return wa

    def set_labels(self, path):
        """The set's metric labels, as the destination controller sends
        them for a Service (its name and namespace), or the entry's own."""
        dst = self.config.destination(path) or {}
        if "set_labels" in dst:
            return dst["set_labels"]
        for key, entry in self.config.data.get("destinations", {}).items():
            if entry is dst:
                name, namespace = service_ref(key, dst)
                return {"namespace": namespace, "service": name}
        return {}

    def endpoints(self, path):
        dst = self.config.destination(path)
        if dst is None:
            return None
        return {"%s:%d" % (ep["addr"], ep["port"]): ep for ep in dst.get("endpoints", [])}

    async def get(self, req, context):
        log("dst.get path=%s peer=%s" % (req.path, peer_identity(context)))
        d = self.pb.destination
        if self.config.fault("silent"):
            log("dst.get path=%s -> silent (fault)" % req.path)
            await asyncio.Event().wait()  # until the client leaves
        sent = None  # addr -> wire bytes of the WeightedAddr last sent
        while True:
            if self.config.fault("garbage", take=True):
                log("dst.get path=%s -> garbage (fault)" % req.path)
                # Field 1 with wire type 7: no protobuf decoder accepts it.
                yield b"\x0f\xff\xff\xff"
            if self.config.fault("reset", take=True):
                log("dst.get path=%s -> UNAVAILABLE (fault)" % req.path)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "reset by the test")
            eps = self.endpoints(req.path)
            if eps is None:
                if sent != "unknown":
                    yield d.Update(no_endpoints=d.NoEndpoints(exists=False))
                    sent = "unknown"
            elif not eps:
                if sent != {}:
                    yield d.Update(no_endpoints=d.NoEndpoints(exists=True))
                    sent = {}
            else:
                now = {k: self.weighted_addr(ep) for k, ep in eps.items()}
                old = sent if isinstance(sent, dict) else {}
                gone = [k for k in old if k not in now]
                if gone:
                    yield d.Update(
                        remove=d.AddrSet(addrs=[tcp_address(self.pb.net, *split_authority(k)) for k in gone])
                    )
                fresh = [wa for k, wa in now.items() if old.get(k) != wa.SerializeToString(deterministic=True)]
                if fresh:
                    yield d.Update(add=d.WeightedAddrSet(addrs=fresh, metric_labels=self.set_labels(req.path)))
                sent = {k: wa.SerializeToString(deterministic=True) for k, wa in now.items()}
            await self.config.wait_changed()

    def profile(self, path):
        d = self.pb.destination
        dst = self.config.destination(path)
        if dst is None:
            return d.DestinationProfile()
        prof = d.DestinationProfile(
            fully_qualified_name=dst.get("fqn", ""),
            opaque_protocol=bool(dst.get("opaque", False)),
        )
        # As the destination controller does for a pod's IP:port: the
        # profile names the endpoint itself (the policy controller answers
        # NotFound for it, so the proxy forwards to this endpoint).
        eps = dst.get("endpoints", [])
        if dst.get("policy") == "not-found" and eps:
            prof.endpoint.CopyFrom(self.weighted_addr(eps[0]))
        for r in dst.get("routes", []):
            prof.routes.append(self.route(r))
        budget = dst.get("retry_budget")
        if budget:
            prof.retry_budget.CopyFrom(
                d.RetryBudget(
                    retry_ratio=budget.get("ratio", 0.2),
                    min_retries_per_second=budget.get("min_per_second", 10),
                    ttl=duration(self.pb, budget.get("ttl_s", 10)),
                )
            )
        for o in dst.get("dst_overrides", []):
            prof.dst_overrides.append(d.WeightedDst(authority=o["authority"], weight=o["weight"]))
        return prof

    def route(self, r):
        """A profile route: its condition (all of method and path regex, or
        `"match"` as raw {"not": ...}/{"any": [...]} JSON), name, timeout,
        retryability."""
        d = self.pb.destination

        def cond(m):
            if "all" in m:
                return d.RequestMatch(all=d.RequestMatch.Seq(matches=[cond(x) for x in m["all"]]))
            if "any" in m:
                return d.RequestMatch(any=d.RequestMatch.Seq(matches=[cond(x) for x in m["any"]]))
            if "not" in m:
                return d.RequestMatch(**{"not": cond(m["not"])})
            if "path_regex" in m:
                return d.RequestMatch(path=d.PathMatch(regex=m["path_regex"]))
            if "method" in m:
                ht = self.pb.http_types
                return d.RequestMatch(
                    method=ht.HttpMethod(registered=ht.HttpMethod.Registered.Value(m["method"]))
                )
            raise ValueError("a route match needs all, any, not, path_regex or method: %r" % m)

        parts = [{k: r[k]} for k in ("method", "path_regex") if k in r]
        m = r.get("match") or ({"all": parts} if len(parts) > 1 else parts[0] if parts else {"path_regex": ".*"})
        route = d.Route(condition=cond(m), metrics_labels={"route": r.get("name", "")}, is_retryable=bool(r.get("retryable")))
        if "timeout_ms" in r:
            route.timeout.CopyFrom(duration(self.pb, r["timeout_ms"] / 1000.0))
        # "classes": [{"min": 400, "max": 499, "failure": true}, ...]: response
        # classes, each a status range (a ServiceProfile's responseClasses).
        for c in r.get("classes", []):
            route.response_classes.append(d.ResponseClass(
                condition=d.ResponseMatch(status=d.HttpStatusRange(min=c["min"], max=c["max"])),
                is_failure=bool(c["failure"])))
        return route

    async def get_profile(self, req, context):
        log("dst.profile path=%s" % req.path)
        async for msg in watch(self.config, context, lambda: self.profile(req.path)):
            yield msg


# --- outbound policy --------------------------------------------------------


class Outbound:
    def __init__(self, pb, config):
        self.pb = pb
        self.config = config

    def target(self, spec):
        if spec.HasField("addr"):
            return from_tcp_address(spec.addr)
        return spec.authority

    def policy(self, target):
        """The OutboundPolicy for target, or a gRPC status code when the
        controller would refuse the lookup."""
        dst = self.config.destination(target)
        if dst is None:
            mode = self.config.data.get("unknown_policy", "not-found")
        else:
            mode = dst.get("policy", "service")
        if mode == "not-found":
            return grpc.StatusCode.NOT_FOUND
        if mode == "egress":
            return self.fallback(target)
        if mode == "service":
            return self.service(target, dst or {})
        raise ValueError("policy must be service, not-found or egress, not %r" % mode)

    def queue(self):
        pb = self.pb
        return pb.outbound.Queue(capacity=100, failfast_timeout=duration(pb, 3))

    def service(self, target, dst):
        """A Service with no routes: policy-controller's to_proto with the
        default http route and opaque route, every one to one balancer that
        resolves through Destination.Get."""
        pb = self.pb
        o, meta = pb.outbound, pb.meta
        _, port = split_authority(target)
        name, namespace = service_ref(target, dst)
        resource = meta.Metadata(
            resource=meta.Resource(group="core", kind="Service", name=name, namespace=namespace, port=port)
        )
        backend = o.Backend(
            metadata=resource,
            queue=self.queue(),
            balancer=o.Backend.BalanceP2c(
                discovery=o.Backend.EndpointDiscovery(
                    dst=o.Backend.EndpointDiscovery.DestinationGet(path=service_authority(target, dst))
                ),
                peak_ewma=o.Backend.BalanceP2c.PeakEwma(default_rtt=duration(pb, 0.03), decay=duration(pb, 10)),
            ),
        )
        opaque = o.ProxyProtocol.Opaque(routes=[self.opaque_route("opaq", backend)])
        # "opaque_route": a TCPRoute's instead of the default route to the
        # Service (see configured_opaque_route).
        if "opaque_route" in dst:
            opaque = self.configured_opaque_route(dst["opaque_route"])
        if "tls_routes" in dst:
            protocol = o.ProxyProtocol(tls=o.ProxyProtocol.Tls(routes=[self.configured_tls_route(r) for r in dst["tls_routes"]]))
        elif dst.get("opaque"):
            protocol = o.ProxyProtocol(opaque=opaque)
        else:
            # Configured routes first (an HTTPRoute's rules), then the
            # default route to the Service itself.
            http = [self.configured_route(r, namespace, backend) for r in dst.get("http_routes", [])]
            # ("default_route": false: none, as when an HTTPRoute has the
            # Service for its parent.)
            if dst.get("default_route", True):
                http.append(self.http_route("http", backend, prefix="/"))
            # {"max_failures": n, "backoff_ms": t}: consecutive-failures
            # accrual, as the policy controller sends from the Service's
            # balancer.linkerd.io/failure-accrual annotations.
            accrual = None
            if "failure_accrual" in dst:
                fa = dst["failure_accrual"]
                backoff = duration(pb, fa.get("backoff_ms", 1000) / 1000.0)
                accrual = o.FailureAccrual(
                    consecutive_failures=o.FailureAccrual.ConsecutiveFailures(
                        max_failures=fa["max_failures"],
                        backoff=o.ExponentialBackoff(min_backoff=backoff, max_backoff=backoff, jitter_ratio=0.0),
                    )
                )
            protocol = o.ProxyProtocol(
                detect=o.ProxyProtocol.Detect(
                    timeout=duration(pb, self.config.data.get("detect_timeout_ms", 10000) / 1000.0),
                    opaque=opaque,
                    http1=o.ProxyProtocol.Http1(routes=http, failure_accrual=accrual),
                    http2=o.ProxyProtocol.Http2(routes=http, failure_accrual=accrual),
                )
            )
        return o.OutboundPolicy(metadata=resource, protocol=protocol)

    def fallback(self, target):
        """policy-controller's egress fallback: forward to the original
        destination, no TLS."""
        pb = self.pb
        o, meta = pb.outbound, pb.meta
        md = meta.Metadata(default="egress-fallback")
        backend = o.Backend(
            metadata=md,
            queue=self.queue(),
            forward=pb.destination.WeightedAddr(addr=tcp_address(pb.net, *split_authority(target)), weight=1),
        )
        http = [self.http_route("egress-fallback", backend, prefix=None)]
        return o.OutboundPolicy(
            metadata=md,
            protocol=o.ProxyProtocol(
                detect=o.ProxyProtocol.Detect(
                    timeout=duration(pb, 10),
                    opaque=o.ProxyProtocol.Opaque(routes=[self.opaque_route("egress-fallback", backend)]),
                    http1=o.ProxyProtocol.Http1(routes=http),
                    http2=o.ProxyProtocol.Http2(routes=http),
                )
            ),
        )

    def http_route(self, name, backend, prefix):
        pb = self.pb
        o, hr = pb.outbound, pb.http_route
        match = hr.HttpRouteMatch()
        if prefix is not None:
            match.path.prefix = prefix
        return o.HttpRoute(
            metadata=pb.meta.Metadata(default=name),
            rules=[
                o.HttpRoute.Rule(
                    matches=[match],
                    backends=o.HttpRoute.Distribution(
                        first_available=o.HttpRoute.Distribution.FirstAvailable(
                            backends=[o.HttpRoute.RouteBackend(backend=backend)]
                        )
                    ),
                    timeouts=hr.Timeouts(),
                )
            ],
        )

    def configured_route(self, r, namespace, parent):
        """An HTTPRoute with one rule, from the config: `path_prefix` /
        `path_exact`, `method`, `headers` (exact values), `query`, `host`; `backends`
        (a list of {"authority", "weight", "queue"}: random-available
        through Destination.Get, or {"forward": "ip:port"}), `timeout_ms`, `retry`
        (true, or {"limit", "statuses": [[lo, hi]], "timeout_ms", "backoff_ms", "max_request_bytes"}), `allow_l5d_headers`,
        `filters` (see http_filter)."""
        pb = self.pb
        o, hr = pb.outbound, pb.http_route
        match = hr.HttpRouteMatch()
        if "path_prefix" in r:
            match.path.prefix = r["path_prefix"]
        if "path_exact" in r:
            match.path.exact = r["path_exact"]
        if "method" in r:
            match.method.registered = pb.http_types.HttpMethod.Registered.Value(r["method"])
        for k, v in r.get("headers", {}).items():
            match.headers.append(hr.HeaderMatch(name=k, exact=v.encode()))
        # "query": {name: value, or {"regex": re}}
        for k, v in r.get("query", {}).items():
            if isinstance(v, dict):
                match.query_params.append(hr.QueryParamMatch(name=k, regex=v["regex"]))
            else:
                match.query_params.append(hr.QueryParamMatch(name=k, exact=v))
        backends = []
        for b in r.get("backends", []):
            backend = self.configured_backend(b)
            # "filters": the backend's own (see http_filter).
            filters = [self.http_filter(f) for f in b.get("filters", [])]
            backends.append(
                o.HttpRoute.WeightedRouteBackend(
                    backend=o.HttpRoute.RouteBackend(backend=backend, filters=filters), weight=b.get("weight", 1)
                )
            )
        if "backends" not in r:
            # As the policy controller: a rule without backendRefs goes to
            # the parent Service.
            backends.append(o.HttpRoute.WeightedRouteBackend(backend=o.HttpRoute.RouteBackend(backend=parent), weight=1))
        rule = o.HttpRoute.Rule(
            matches=[match],
            backends=o.HttpRoute.Distribution(
                random_available=o.HttpRoute.Distribution.RandomAvailable(backends=backends)
            ),
            timeouts=hr.Timeouts(),
        )
        if "timeout_ms" in r:
            rule.timeouts.request.CopyFrom(duration(pb, r["timeout_ms"] / 1000.0))
        retry = r.get("retry")
        if retry:
            # true: two retries on 5xx; or {"limit": n, "statuses": [[lo, hi], ...]}
            spec = retry if isinstance(retry, dict) else {}
            rule.retry.max_retries = spec.get("limit", 2)
            # As Linkerd's policy controller: 64 KiB unless told.
            rule.retry.max_request_bytes = spec.get("max_request_bytes", 64 * 1024)
            # As the policy controller: 5xx unless told.
            for lo, hi in spec.get("statuses", [[500, 599]]):
                rule.retry.conditions.status_ranges.append(
                    o.HttpRoute.Retry.Conditions.StatusRange(start=lo, end=hi)
                )
            # "timeout_ms": the per-attempt timeout; "backoff_ms": a fixed
            # pause before each retry (min = max, no jitter).
            if "timeout_ms" in spec:
                rule.retry.timeout.CopyFrom(duration(pb, spec["timeout_ms"] / 1000.0))
            if "backoff_ms" in spec:
                b = duration(pb, spec["backoff_ms"] / 1000.0)
                rule.retry.backoff.CopyFrom(o.ExponentialBackoff(min_backoff=b, max_backoff=b, jitter_ratio=0.0))
        if r.get("allow_l5d_headers"):
            rule.allow_l5d_request_headers = True
        for f in r.get("filters", []):
            rule.filters.append(self.http_filter(f))
        hosts = []
        if "host" in r:
            hosts.append(hr.HostMatch(exact=r["host"]))
        meta = pb.meta.Metadata(
            resource=pb.meta.Resource(group="gateway.networking.k8s.io", kind="HTTPRoute", name=r["name"], namespace=namespace)
        )
        return o.HttpRoute(metadata=meta, hosts=hosts, rules=[rule])

    def http_filter(self, f):
        """One HTTPRoute filter from the config: {"fail": {"status",
        "message", "ratio": [num, den]}}, {"redirect": {"scheme", "host",
        "port", "full" | "prefix", "status"}}, {"request_headers" |
        "response_headers": {"add": {name: value}, "set": {...},
        "remove": [name]}}."""
        pb = self.pb
        o, hr, ht = pb.outbound, pb.http_route, pb.http_types
        if "fail" in f:
            spec = f["fail"]
            fi = hr.HttpFailureInjector(status=spec["status"], message=spec.get("message", ""))
            if "ratio" in spec:
                fi.ratio.CopyFrom(hr.Ratio(numerator=spec["ratio"][0], denominator=spec["ratio"][1]))
            return o.HttpRoute.Filter(failure_injector=fi)
        if "redirect" in f:
            spec = f["redirect"]
            rr = hr.RequestRedirect(host=spec.get("host", ""), port=spec.get("port", 0), status=spec.get("status", 0))
            if "scheme" in spec:
                rr.scheme.CopyFrom(ht.Scheme(registered=ht.Scheme.Registered.Value(spec["scheme"].upper())))
            if "full" in spec:
                rr.path.full = spec["full"]
            if "prefix" in spec:
                rr.path.prefix = spec["prefix"]
            return o.HttpRoute.Filter(redirect=rr)

        def headers(d):
            return ht.Headers(headers=[ht.Headers.Header(name=k, value=v.encode()) for k, v in d.items()])

        for key, msg, field in (
            ("request_headers", hr.RequestHeaderModifier, "request_header_modifier"),
            ("response_headers", hr.ResponseHeaderModifier, "response_header_modifier"),
        ):
            if key in f:
                spec = f[key]
                m = msg(add=headers(spec.get("add", {})), set=headers(spec.get("set", {})), remove=spec.get("remove", []))
                return o.HttpRoute.Filter(**{field: m})
        raise ValueError("unknown filter %r" % f)

    def configured_backend(self, b):
        """A backend from the config: {"authority", "queue"} (through
        Destination.Get) or {"forward": "ip:port"}."""
        pb = self.pb
        o = pb.outbound
        if "forward" in b:
            kind = dict(forward=pb.destination.WeightedAddr(addr=tcp_address(pb.net, *split_authority(b["forward"])), weight=1))
        else:
            kind = dict(
                balancer=o.Backend.BalanceP2c(
                    discovery=o.Backend.EndpointDiscovery(
                        dst=o.Backend.EndpointDiscovery.DestinationGet(path=b["authority"])
                    ),
                    peak_ewma=o.Backend.BalanceP2c.PeakEwma(default_rtt=duration(pb, 0.03), decay=duration(pb, 10)),
                )
            )
        # "queue": {"capacity": n, "failfast_ms": t}, else the
        # policy controller's default (100, 3 s).
        if "queue" in b:
            q = b["queue"]
            queue = o.Queue(capacity=q["capacity"], failfast_timeout=duration(pb, q["failfast_ms"] / 1000.0))
        else:
            queue = self.queue()
        return o.Backend(metadata=pb.meta.Metadata(default=b.get("authority", b.get("forward"))), queue=queue, **kind)

    def configured_opaque_route(self, r):
        """A TCPRoute's opaque route from the config: `backends` (as an
        HTTP route's, each with a `weight` and `"forbidden": true` for a
        backend filter), `forbidden` (the rule's filter), or `"routes": 0`
        (no route at all)."""
        o = self.pb.outbound
        oq = self.pb.opaque_route
        if r.get("routes") == 0:
            return o.ProxyProtocol.Opaque(routes=[])
        forbid = lambda: o.OpaqueRoute.Filter(forbidden=oq.Forbidden())
        backends = [
            o.OpaqueRoute.WeightedRouteBackend(
                backend=o.OpaqueRoute.RouteBackend(
                    backend=self.configured_backend(b), filters=[forbid()] if b.get("forbidden") else []
                ),
                weight=b.get("weight", 1),
            )
            for b in r.get("backends", [])
        ]
        rule = o.OpaqueRoute.Rule(
            backends=o.OpaqueRoute.Distribution(
                random_available=o.OpaqueRoute.Distribution.RandomAvailable(backends=backends)
            ),
            filters=[forbid()] if r.get("forbidden") else [],
        )
        route = o.OpaqueRoute(metadata=self.pb.meta.Metadata(default=r.get("name", "tcp")), rules=[rule])
        return o.ProxyProtocol.Opaque(routes=[route])

    def configured_tls_route(self, r):
        """A TLSRoute from the config: `snis` (exact names, or "*.suffix"),
        `backends` and `forbidden` as an opaque route's."""
        pb = self.pb
        o = pb.outbound
        forbid = lambda: o.TlsRoute.Filter(forbidden=pb.opaque_route.Forbidden())
        snis = []
        for n in r.get("snis", []):
            if n.startswith("*."):
                snis.append(pb.tls_route.SniMatch(suffix=pb.tls_route.SniMatch.Suffix(reverse_labels=list(reversed(n[2:].split("."))))))
            else:
                snis.append(pb.tls_route.SniMatch(exact=n))
        backends = [
            o.TlsRoute.WeightedRouteBackend(
                backend=o.TlsRoute.RouteBackend(
                    backend=self.configured_backend(b), filters=[forbid()] if b.get("forbidden") else []
                ),
                weight=b.get("weight", 1),
            )
            for b in r.get("backends", [])
        ]
        rule = o.TlsRoute.Rule(
            backends=o.TlsRoute.Distribution(random_available=o.TlsRoute.Distribution.RandomAvailable(backends=backends)),
            filters=[forbid()] if r.get("forbidden") else [],
        )
        return o.TlsRoute(metadata=pb.meta.Metadata(default=r.get("name", "tls")), snis=snis, rules=[rule])

    def opaque_route(self, name, backend):
        o = self.pb.outbound
        return o.OpaqueRoute(
            metadata=self.pb.meta.Metadata(default=name),
            rules=[
                o.OpaqueRoute.Rule(
                    backends=o.OpaqueRoute.Distribution(
                        first_available=o.OpaqueRoute.Distribution.FirstAvailable(
                            backends=[o.OpaqueRoute.RouteBackend(backend=backend)]
                        )
                    )
                )
            ],
        )

    async def get(self, spec, context):
        target = self.target(spec)
        p = self.policy(target)
        log("policy.get target=%s workload=%s -> %s" % (target, spec.source_workload, describe(p)))
        if isinstance(p, grpc.StatusCode):
            await context.abort(p, "no policy for %s" % target)
        return p

    async def watch(self, spec, context):
        target = self.target(spec)
        p = self.policy(target)
        log("policy.watch target=%s workload=%s -> %s" % (target, spec.source_workload, describe(p)))
        if isinstance(p, grpc.StatusCode):
            await context.abort(p, "no policy for %s" % target)

        def answer():
            p = self.policy(target)
            # A target that stops having a policy ends the stream; the
            # proxy looks it up again.
            return None if isinstance(p, grpc.StatusCode) else p

        async for msg in watch(self.config, context, answer):
            yield msg


def describe(p):
    if isinstance(p, grpc.StatusCode):
        return p.name
    return "%s %s" % (p.protocol.WhichOneof("kind"), p.metadata.WhichOneof("kind"))


# --- inbound policy ---------------------------------------------------------


class Inbound:
    def __init__(self, pb, config):
        self.pb = pb
        self.config = config

    def server(self, port):
        """The default server the policy controller builds for a pod port
        with no Server resource (default_inbound_server): detect (or opaque
        for the opaque ports), the default policy's one authorization, and
        the catch-all "default" HTTP route."""
        pb = self.pb
        i, meta = pb.inbound, pb.meta
        conf = self.config.data.get("inbound", {})
        port_conf = conf.get("ports", {}).get(str(port), {})
        policy = port_conf.get("default_policy", conf.get("default_policy", "all-unauthenticated"))
        protocol = port_conf.get("protocol", "detect")

        authzs = []
        explicit = port_conf.get("server")
        if explicit:
            # A Server resource with one AuthorizationPolicy: mesh TLS from
            # the listed identities (names), from the listed networks.
            nets = explicit.get("networks", ["0.0.0.0/0", "::/0"])
            authzs.append(
                i.Authz(
                    networks=[i.Network(net=ip_network(pb.net, n)) for n in nets],
                    authentication=i.Authn(
                        meshTLS=i.Authn.PermitMeshTLS(
                            identities=i.Authn.PermitMeshTLS.PermitClientIdentities(
                                identities=[i.Identity(name=n) for n in explicit.get("identities", [])]
                            )
                        )
                    ),
                    labels={"group": "policy.linkerd.io", "kind": "authorizationpolicy", "name": explicit["name"] + "-authz"},
                )
            )
            policy = None
        if policy in ("all-unauthenticated", "all-authenticated"):
            if policy == "all-authenticated":
                authn = i.Authn(
                    meshTLS=i.Authn.PermitMeshTLS(
                        identities=i.Authn.PermitMeshTLS.PermitClientIdentities(suffixes=[i.IdentitySuffix(parts=[])])
                    )
                )
            else:
                authn = i.Authn(unauthenticated=i.Authn.PermitUnauthenticated())
            authzs.append(
                i.Authz(
                    networks=[
                        i.Network(net=ip_network(pb.net, "0.0.0.0/0")),
                        i.Network(net=ip_network(pb.net, "::/0")),
                    ],
                    authentication=authn,
                    labels={"group": "", "kind": "default", "name": policy},
                    metadata=meta.Metadata(default=policy),
                )
            )
        elif policy not in ("deny", None):
            raise ValueError("default_policy must be all-unauthenticated, all-authenticated or deny, not %r" % policy)

        route = i.HttpRoute(
            metadata=meta.Metadata(default="default"),
            rules=[i.HttpRoute.Rule(matches=[pb.http_route.HttpRouteMatch(path=pb.http_route.PathMatch(prefix="/"))])],
        )
        # "routes": HTTPRoutes of the server instead of the default route,
        # each [{"name", "path_prefix" | "path_exact", "identities": [...]
        # (an AuthorizationPolicy on the route: mesh TLS from those) or
        # "unauthenticated": true, "filters": [see Outbound.http_filter]}].
        routes = [self.route(r) for r in port_conf.get("routes", [])] or [route]
        # "rate_limit": {"total": rps, "identity": rps, "overrides":
        # [{"rps", "identities": [...]}]}: an HTTPLocalRateLimitPolicy.
        limit = None
        if "rate_limit" in port_conf:
            rl = port_conf["rate_limit"]
            Lim = i.HttpLocalRateLimit.Limit
            limit = i.HttpLocalRateLimit(
                metadata=meta.Metadata(
                    resource=meta.Resource(group="policy.linkerd.io", kind="HTTPLocalRateLimitPolicy", name="limit")
                ),
                overrides=[
                    i.HttpLocalRateLimit.Override(
                        limit=Lim(requestsPerSecond=o["rps"]),
                        clients=i.HttpLocalRateLimit.Override.ClientIdentities(
                            identities=[i.Identity(name=n) for n in o["identities"]]
                        ),
                    )
                    for o in rl.get("overrides", [])
                ],
            )
            if "total" in rl:
                limit.total.CopyFrom(Lim(requestsPerSecond=rl["total"]))
            if "identity" in rl:
                limit.identity.CopyFrom(Lim(requestsPerSecond=rl["identity"]))
        if protocol == "detect":
            proto = i.ProxyProtocol(
                detect=i.ProxyProtocol.Detect(
                    timeout=duration(pb, conf.get("detect_timeout_ms", 10000) / 1000.0),
                    http_routes=routes,
                    http_local_rate_limit=limit,
                )
            )
        elif protocol == "opaque":
            proto = i.ProxyProtocol(opaque=i.ProxyProtocol.Opaque())
        elif protocol == "http1":
            proto = i.ProxyProtocol(http1=i.ProxyProtocol.Http1(routes=routes, local_rate_limit=limit))
        elif protocol == "http2":
            proto = i.ProxyProtocol(http2=i.ProxyProtocol.Http2(routes=routes, local_rate_limit=limit))
        else:
            raise ValueError("inbound protocol must be detect, opaque, http1 or http2, not %r" % protocol)
        labels = (
            {"group": "policy.linkerd.io", "kind": "server", "name": explicit["name"]}
            if explicit
            else {"group": "", "kind": "default", "name": policy}
        )
        return i.Server(protocol=proto, authorizations=authzs, labels=labels)

    def route(self, r):
        """One configured inbound HTTPRoute (see `server`)."""
        pb = self.pb
        i, meta, hr = pb.inbound, pb.meta, pb.http_route
        match = hr.HttpRouteMatch()
        if "path_prefix" in r:
            match.path.prefix = r["path_prefix"]
        if "path_exact" in r:
            match.path.exact = r["path_exact"]
        everyone = [i.Network(net=ip_network(pb.net, "0.0.0.0/0")), i.Network(net=ip_network(pb.net, "::/0"))]
        authzs = []
        if r.get("unauthenticated"):
            authzs.append(
                i.Authz(
                    networks=everyone,
                    authentication=i.Authn(unauthenticated=i.Authn.PermitUnauthenticated()),
                    labels={"group": "policy.linkerd.io", "kind": "authorizationpolicy", "name": r["name"] + "-public"},
                )
            )
        if "identities" in r:
            authzs.append(
                i.Authz(
                    networks=everyone,
                    authentication=i.Authn(
                        meshTLS=i.Authn.PermitMeshTLS(
                            identities=i.Authn.PermitMeshTLS.PermitClientIdentities(
                                identities=[i.Identity(name=n) for n in r["identities"]]
                            )
                        )
                    ),
                    labels={"group": "policy.linkerd.io", "kind": "authorizationpolicy", "name": r["name"] + "-authz"},
                )
            )
        # (The inbound filter kinds are the outbound ones' HTTP subset.)
        filters = []
        for f in r.get("filters", []):
            out = Outbound.http_filter(self, f)
            filters.append(i.HttpRoute.Filter(**{out.WhichOneof("kind"): getattr(out, out.WhichOneof("kind"))}))
        return i.HttpRoute(
            metadata=meta.Metadata(
                resource=meta.Resource(group="policy.linkerd.io", kind="HTTPRoute", name=r["name"], namespace="default")
            ),
            authorizations=authzs,
            rules=[i.HttpRoute.Rule(matches=[match], filters=filters)],
        )

    async def get_port(self, spec, context):
        log("inbound.get port=%d workload=%s" % (spec.port, spec.workload))
        return self.server(spec.port)

    async def watch_port(self, spec, context):
        log("inbound.watch port=%d workload=%s" % (spec.port, spec.workload))
        # Held open, unanswered, while the fault is on; answered after.
        while self.config.fault("silent-policy"):
            await asyncio.sleep(0.05)
        async for msg in watch(self.config, context, lambda: self.server(spec.port)):
            yield msg


# --- server -----------------------------------------------------------------


def handlers(pb, identity, dst, outbound, inbound):
    def unary(fn, req, rsp):
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=rsp.SerializeToString
        )

    def stream(fn, req, rsp):
        # Raw bytes (a fault's garbage) go out as they are.
        def serialize(m):
            return m if isinstance(m, bytes) else m.SerializeToString()

        return grpc.unary_stream_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=serialize
        )

    d, o, i = pb.destination, pb.outbound, pb.inbound
    return [
        grpc.method_handlers_generic_handler(
            "io.linkerd.proxy.identity.Identity",
            {"Certify": unary(identity.certify, pb.identity.CertifyRequest, pb.identity.CertifyResponse)},
        ),
        grpc.method_handlers_generic_handler(
            "io.linkerd.proxy.destination.Destination",
            {
                "Get": stream(dst.get, d.GetDestination, d.Update),
                "GetProfile": stream(dst.get_profile, d.GetDestination, d.DestinationProfile),
            },
        ),
        grpc.method_handlers_generic_handler(
            "io.linkerd.proxy.outbound.OutboundPolicies",
            {
                "Get": unary(outbound.get, o.TrafficSpec, o.OutboundPolicy),
                "Watch": stream(outbound.watch, o.TrafficSpec, o.OutboundPolicy),
            },
        ),
        grpc.method_handlers_generic_handler(
            "io.linkerd.proxy.inbound.InboundServerPolicies",
            {
                "GetPort": unary(inbound.get_port, i.PortSpec, i.Server),
                "WatchPort": stream(inbound.watch_port, i.PortSpec, i.Server),
            },
        ),
    ]


class Protos:
    def __init__(self, mods):
        from google.protobuf import duration_pb2, timestamp_pb2

        self.duration_pb2 = duration_pb2
        self.timestamp_pb2 = timestamp_pb2
        self.identity = mods["identity"]
        self.destination = mods["destination"]
        self.outbound = mods["outbound"]
        self.inbound = mods["inbound"]
        self.meta = mods["meta"]
        self.net = mods["net"]
        self.http_route = mods["http_route"]
        self.http_types = mods["http_types"]
        self.opaque_route = mods["opaque_route"]
        self.tls_route = mods["tls_route"]


async def serve(args, pb):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    config = Config(args.config, args.fault_dir)
    identity = Identity(pb, args) if args.ca_cert and args.ca_key else NoIdentity()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        handlers(pb, identity, Destination(pb, config), Outbound(pb, config), Inbound(pb, config))
    )
    port = server.add_insecure_port(args.listen)
    if port == 0:
        raise SystemExit("fake_cp: cannot listen on %s" % args.listen)
    if args.tls_listen:
        # The same services over mutual TLS, as Linkerd's control plane
        # serves meshed proxies: this certificate, clients' verified
        # against the CA.
        with open(args.tls_cert, "rb") as f:
            cert = f.read()
        with open(args.tls_key, "rb") as f:
            key = f.read()
        with open(args.tls_ca, "rb") as f:
            ca = f.read()
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        tls_port = server.add_secure_port(args.tls_listen, creds)
        if tls_port == 0:
            raise SystemExit("fake_cp: cannot listen on %s" % args.tls_listen)
        log("tls-ready %s:%d" % (args.tls_listen.rpartition(":")[0], tls_port))
    await server.start()
    host = args.listen.rpartition(":")[0]
    log("ready %s:%d" % (host, port))
    watcher = asyncio.ensure_future(config.watch(stop))
    orphan = asyncio.ensure_future(orphan_watch(stop))
    await stop.wait()
    orphan.cancel()
    log("stopping")
    # Open watches end with the server; the proxies see the streams close.
    await server.stop(0.5)
    await watcher
    log("stopped")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:8090", help="HOST:PORT (port 0: any)")
    ap.add_argument("--config", help="JSON: destinations, policies (docs/MESH-TESTING.md)")
    ap.add_argument("--ca-cert", help="issuer certificate, PEM (without it and --ca-key: no Certify)")
    ap.add_argument("--ca-key", help="issuer key (ECDSA P-256), PEM")
    ap.add_argument(
        "--fault-dir",
        help="faults on demand: files named garbage (the next Destination message is undecodable bytes), "
        "reset (open Destination streams end with UNAVAILABLE), silent (new Destination streams never answer), silent-policy (WatchPort streams answer only once it is removed); "
        "garbage and reset are removed once acted on",
    )
    ap.add_argument("--chain", help="PEM certificates sent as intermediate_certificates")
    ap.add_argument("--cert-lifetime", type=float, default=24 * 3600, help="leaf lifetime, seconds")
    ap.add_argument("--identity-fail-first", type=int, default=0, help="answer UNAVAILABLE to the first N Certify calls")
    ap.add_argument("--identity-fail-file", help="answer UNAVAILABLE to Certify while this file exists")
    ap.add_argument("--tls-listen", help="HOST:PORT to serve over mutual TLS too (port 0: any)")
    ap.add_argument("--tls-cert", help="the TLS listener's certificate, PEM")
    ap.add_argument("--tls-key", help="its key, PEM")
    ap.add_argument("--tls-ca", help="the CA clients' certificates must chain to, PEM")
    ap.add_argument("--proto-dir", help="the linkerd2-proxy-api crate's proto/ (default: found via Cargo.lock)")
    args = ap.parse_args()

    mods = load_protos(args.proto_dir or find_proto_dir())
    asyncio.run(serve(args, Protos(mods)))


if __name__ == "__main__":
    main()
