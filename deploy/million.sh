#!/usr/bin/env bash
# One million live WebSocket connections on this machine against a local Herald cluster:
# ~53 edges, a router, redis-server and nats-server, with the client ends held by herald-bench
# worker processes from many 127.x.y.z source addresses (benches/README.md, issue 7).
#
#   deploy/million.sh                       # the full run (1,000,000 connections, 53 edges)
#   deploy/million.sh --connections 50000 --edges 3   # any option of `herald-bench million`
#
# Needs root for the kernel settings it raises (net.netfilter.nf_conntrack_max, net.ipv4.tcp_mem;
# it says which and why, and restores them afterwards, also on failure or Ctrl-C), redis-server,
# redis-cli and nats-server (Debian: apt-get install redis-server redis-tools nats-server).
# Results: benches/results/million-<N>.{json,md,svg}. Bounded by --max-secs (default 1140 s).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bench="${HERALD_BENCH_BIN:-$root/target/release/herald-bench}"
if [ -z "${HERALD_BENCH_BIN:-}" ]; then
  cargo build -q --release -p herald -p herald-bench
fi
for b in redis-server redis-cli nats-server; do
  command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || [ -x "/usr/bin/$b" ] || {
    echo "million.sh: $b not found (Debian: apt-get install redis-server redis-tools nats-server)" >&2
    exit 1
  }
done

# herald-bench restores what it raised; should it be killed outright, this does.
saved="$(mktemp /tmp/herald-million-sysctl.XXXXXX)"
restore() {
  if [ -s "$saved" ]; then
    while read -r path value; do
      echo "million.sh: restoring $path = $value" >&2
      echo "$value" >"$path" || echo "million.sh: could not restore $path to $value" >&2
    done <"$saved"
  fi
  rm -f "$saved"
}
trap restore EXIT
trap 'exit 130' INT TERM

"$bench" million --sysctl-save "$saved" "$@"
