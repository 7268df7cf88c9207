#!/usr/bin/env bash
# iptables.sh - redirect a pod's TCP traffic through the ringmesh sidecar
# (what linkerd2-proxy-init does for linkerd2-proxy), for IPv4 and IPv6.
#
# Usage: iptables.sh [-h] [--clean] [KEY=value ...]   (settings as arguments or environment)
#   Run once per network namespace (pod) as root / with CAP_NET_ADMIN, before the
#   application starts; in Kubernetes from an init container (kubernetes/sidecar.yaml).
#   Never run it on a host's root namespace unless you mean to proxy the host.
#
# What it adds, in the nat table of iptables and of ip6tables:
#   chain RINGMESH_PREROUTING, jumped to from PREROUTING (TCP only):
#     arriving on lo                        -> RETURN
#     destination port in SKIP_INBOUND_PORTS -> RETURN
#     anything else                         -> REDIRECT to INBOUND_PORT
#   chain RINGMESH_OUTPUT, jumped to from OUTPUT (TCP only):
#     sent by uid PROXY_UID (the proxy)     -> RETURN  (else it would loop)
#     leaving via lo (loopback, own IPs)    -> RETURN
#     destination port in SKIP_OUTBOUND_PORTS -> RETURN
#     anything else                         -> REDIRECT to OUTBOUND_PORT
#   The proxy recovers the original destination with SO_ORIGINAL_DST.
#
# Idempotent: running it again rebuilds both chains from the current settings
# and never duplicates the jump rules. --clean removes the jumps and the chains.
#
# Settings:
#   PROXY_UID=2102               uid the proxy runs as (its traffic is not redirected)
#   OUTBOUND_PORT=4140           ringmesh outbound listener
#   INBOUND_PORT=4143            ringmesh inbound listener
#   SKIP_INBOUND_PORTS=4190,4191 comma list of ports or ranges (8000-8100) not redirected
#                                inbound; the default keeps the tap and admin ports direct
#   SKIP_OUTBOUND_PORTS=         comma list of ports or ranges not redirected outbound
#   IPV6=auto                    auto: also ip6tables if its nat table works; 1: required; 0: skip
#   IPTABLES_MODE=               legacy | nft: use iptables-legacy / iptables-nft (and the
#                                ip6tables- twins) instead of the default iptables on PATH
#   Example: SKIP_OUTBOUND_PORTS=443,5432 ./iptables.sh   or   ./iptables.sh INBOUND_PORT=5143
set -euo pipefail

NAME=iptables.sh
CLEAN=0
for arg in "$@"; do
  case $arg in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --clean) CLEAN=1 ;;
    [A-Z]*=*) k=${arg%%=*}
              [[ $k =~ ^(PROXY_UID|OUTBOUND_PORT|INBOUND_PORT|SKIP_INBOUND_PORTS|SKIP_OUTBOUND_PORTS|IPV6|IPTABLES_MODE)$ ]] \
                || { echo "$NAME: unknown setting $k (see -h)" >&2; exit 2; }
              export "${arg?}" ;;
    *) echo "$NAME: unknown argument '$arg' (see -h)" >&2; exit 2 ;;
  esac
done

PROXY_UID=${PROXY_UID:-2102}
OUTBOUND_PORT=${OUTBOUND_PORT:-4140}
INBOUND_PORT=${INBOUND_PORT:-4143}
SKIP_INBOUND_PORTS=${SKIP_INBOUND_PORTS-4190,4191}
SKIP_OUTBOUND_PORTS=${SKIP_OUTBOUND_PORTS:-}
IPV6=${IPV6:-auto}
IPTABLES_MODE=${IPTABLES_MODE:-}

CHAIN_IN=RINGMESH_PREROUTING
CHAIN_OUT=RINGMESH_OUTPUT

# ---------------------------------------------------------------- validation
# Every problem is reported, then we stop before touching any table.
ERRORS=()
is_port() { [[ $1 =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
# "443,8000-8100" -> "443 8000:8100" (iptables --dport syntax), or an error
port_list() {  # setting-name value
  local item out=() lo hi
  local -a items
  IFS=, read -r -a items <<<"${2// /}"
  for item in "${items[@]}"; do
    [[ -z $item ]] && continue
    if [[ $item =~ ^([0-9]+)-([0-9]+)$ ]]; then
      lo=${BASH_REMATCH[1]}; hi=${BASH_REMATCH[2]}
      if is_port "$lo" && is_port "$hi" && ((10#$lo <= 10#$hi)); then
        out+=("$((10#$lo)):$((10#$hi))"); continue
      fi
    elif is_port "$item"; then
      out+=("$((10#$item))"); continue
    fi
    ERRORS+=("$1: '$item' is not a port (1-65535) or a range like 8000-8100")
  done
  PORTS=("${out[@]}")
}
[[ $PROXY_UID =~ ^[0-9]+$ ]] || ERRORS+=("PROXY_UID: '$PROXY_UID' is not a numeric uid")
is_port "$OUTBOUND_PORT" || ERRORS+=("OUTBOUND_PORT: '$OUTBOUND_PORT' is not a port")
is_port "$INBOUND_PORT" || ERRORS+=("INBOUND_PORT: '$INBOUND_PORT' is not a port")
PORTS=(); port_list SKIP_INBOUND_PORTS "$SKIP_INBOUND_PORTS"; SKIP_IN=("${PORTS[@]}")
PORTS=(); port_list SKIP_OUTBOUND_PORTS "$SKIP_OUTBOUND_PORTS"; SKIP_OUT=("${PORTS[@]}")
[[ $IPV6 =~ ^(auto|0|1)$ ]] || ERRORS+=("IPV6: '$IPV6' is not auto, 0 or 1")
case $IPTABLES_MODE in
  '') V4=iptables; V6=ip6tables ;;
  legacy|nft) V4=iptables-$IPTABLES_MODE; V6=ip6tables-$IPTABLES_MODE ;;
  *) ERRORS+=("IPTABLES_MODE: '$IPTABLES_MODE' is not legacy or nft"); V4=iptables; V6=ip6tables ;;
esac
command -v "$V4" >/dev/null || ERRORS+=("$V4 not found on PATH (apt-get install iptables)")
if [[ $IPV6 == 1 ]] && ! command -v "$V6" >/dev/null; then ERRORS+=("IPV6=1 but $V6 not found on PATH"); fi
if ((${#ERRORS[@]})); then
  for e in "${ERRORS[@]}"; do echo "$NAME: $e" >&2; done
  exit 2
fi

TOOLS=("$V4")
if [[ $IPV6 != 0 ]]; then
  if command -v "$V6" >/dev/null && "$V6" -w -t nat -S >/dev/null 2>&1; then
    TOOLS+=("$V6")
  elif [[ $IPV6 == 1 ]]; then
    echo "$NAME: IPV6=1 but the ip6tables nat table is not usable:" >&2
    "$V6" -w -t nat -S >/dev/null || true
    exit 1
  else
    echo "$NAME: note: ip6tables nat table not usable here; IPv6 left alone (IPV6=1 makes this an error)" >&2
  fi
fi

# ---------------------------------------------------------------- actions
# -w: wait for the xtables lock instead of failing when another writer holds it.
nat() { local t=$1; shift; "$t" -w -t nat "$@"; }
chain_exists() { nat "$1" -S "$2" >/dev/null 2>&1; }

# Remove every rule in $parent that jumps to $chain, whatever its match spec
# (also rules added by an older version of this script).
unhook() {  # tool parent chain
  local t=$1 parent=$2 chain=$3 line
  local -a spec
  while IFS= read -r line; do
    [[ $line == "-A $parent "*"-j $chain" ]] || continue
    read -r -a spec <<<"${line#-A "$parent" }"
    nat "$t" -D "$parent" "${spec[@]}"
  done < <(nat "$t" -S "$parent")
}

hook() {  # tool parent chain: one jump for TCP, added only if missing
  local t=$1 parent=$2 chain=$3
  nat "$t" -C "$parent" -p tcp -j "$chain" 2>/dev/null || nat "$t" -A "$parent" -p tcp -j "$chain"
}

fresh_chain() {  # tool chain: create it, or empty it if it exists
  if chain_exists "$1" "$2"; then nat "$1" -F "$2"; else nat "$1" -N "$2"; fi
}

clean() {  # tool
  local t=$1
  unhook "$t" PREROUTING "$CHAIN_IN"
  unhook "$t" OUTPUT "$CHAIN_OUT"
  local c
  for c in "$CHAIN_IN" "$CHAIN_OUT"; do
    if chain_exists "$t" "$c"; then nat "$t" -F "$c"; nat "$t" -X "$c"; fi
  done
}

install() {  # tool
  local t=$1 p
  fresh_chain "$t" "$CHAIN_IN"
  nat "$t" -A "$CHAIN_IN" -i lo -m comment --comment ringmesh/loopback -j RETURN
  for p in "${SKIP_IN[@]}"; do
    nat "$t" -A "$CHAIN_IN" -p tcp --dport "$p" -m comment --comment ringmesh/skip-inbound -j RETURN
  done
  nat "$t" -A "$CHAIN_IN" -p tcp -m comment --comment ringmesh/inbound -j REDIRECT --to-ports "$INBOUND_PORT"

  fresh_chain "$t" "$CHAIN_OUT"
  nat "$t" -A "$CHAIN_OUT" -m owner --uid-owner "$PROXY_UID" -m comment --comment ringmesh/proxy-uid -j RETURN
  nat "$t" -A "$CHAIN_OUT" -o lo -m comment --comment ringmesh/loopback -j RETURN
  for p in "${SKIP_OUT[@]}"; do
    nat "$t" -A "$CHAIN_OUT" -p tcp --dport "$p" -m comment --comment ringmesh/skip-outbound -j RETURN
  done
  nat "$t" -A "$CHAIN_OUT" -p tcp -m comment --comment ringmesh/outbound -j REDIRECT --to-ports "$OUTBOUND_PORT"

  # On a first run the chains are complete before they are hooked in. On a re-run
  # they are rebuilt in place with the RETURN rules first, so a connection opened
  # meanwhile is at worst not redirected, never looped back into the proxy.
  hook "$t" PREROUTING "$CHAIN_IN"
  hook "$t" OUTPUT "$CHAIN_OUT"
}

for t in "${TOOLS[@]}"; do
  if ! nat "$t" -S >/dev/null 2>&1; then
    echo "$NAME: cannot read the $t nat table (root / CAP_NET_ADMIN needed):" >&2
    nat "$t" -S >/dev/null || true
    exit 1
  fi
  if [[ $CLEAN == 1 ]]; then
    clean "$t"
    echo "$NAME: $t: removed $CHAIN_IN and $CHAIN_OUT"
  else
    install "$t"
    echo "$NAME: $t: inbound TCP -> :$INBOUND_PORT (skip ${SKIP_INBOUND_PORTS:-none}), outbound TCP -> :$OUTBOUND_PORT (skip ${SKIP_OUTBOUND_PORTS:-none}; uid $PROXY_UID and lo exempt)"
  fi
done
