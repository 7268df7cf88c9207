#!/usr/bin/env bash
# Installs, from Debian's packages, the tools the tests and bench scripts
# drive: iptables/iproute2/setpriv (transparent-mode tests in network
# namespaces), wrk, h2load/nghttp, haproxy, nginx, iperf3, promtool, curl,
# and Debian python modules: websockets, grpcio (gRPC through the proxy) and
# h2 (raw HTTP/2 frames for the attack tests). The identity and mesh tests
# add protoc, protobuf and cryptography (the test Identity service and the
# fake Linkerd control plane, engine/tests/grpc/identity_server.py and
# engine/tests/mesh/fake_cp.py) and tcpdump (TLS, not plaintext, between pods).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg_bin in iptables:iptables iproute2:ip util-linux:setpriv wrk:wrk nghttp2-client:h2load \
    haproxy:haproxy nginx:nginx iperf3:iperf3 prometheus:promtool curl:curl \
    protobuf-compiler:protoc tcpdump:tcpdump; do
    pkg=${pkg_bin%%:*} bin=${pkg_bin##*:}
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
# Debian's python3 (not a pyenv one) runs the WebSocket client/server.
/usr/bin/python3 -c "import websockets" 2>/dev/null || need+=(python3-websockets)
/usr/bin/python3 -c "import grpc" 2>/dev/null || need+=(python3-grpcio)
/usr/bin/python3 -c "import google.protobuf" 2>/dev/null || need+=(python3-protobuf)
/usr/bin/python3 -c "import cryptography" 2>/dev/null || need+=(python3-cryptography)
/usr/bin/python3 -c "import h2" 2>/dev/null || need+=(python3-h2)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing: ${need[*]}" >&2
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
