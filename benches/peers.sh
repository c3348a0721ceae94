#!/usr/bin/env bash
# Installs the peers (never committed) and runs one scenario against Herald and every peer in the
# same run, printing the table with ratios.
#
#   benches/peers.sh            # fanout F1, F2, F3 against herald, nats, mosquitto, ws
#   benches/peers.sh F1         # one preset
#   benches/peers.sh idle       # idle, 15,000 connections: herald, the bare baseline, nats,
#                               # mosquitto and Node ws, one after the other
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# mosquitto's package starts a system broker on 1883; the harness runs its own on free ports.
if [ -d benches/.peers/node_modules/ws ]; then :; else
  mkdir -p benches/.peers && npm install --silent --prefix benches/.peers ws@8 >/dev/null
fi

cargo build --release -q -p herald -p herald-bench
bench=./target/release/herald-bench
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr); $(date -u +%F)"
case "${1:-all}" in
  idle)
    for s in herald baseline nats mosquitto ws; do
      echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
      $bench idle --connections "${2:-15000}" --server "$s"
    done
    ;;
  all)
    for p in F1 F2 F3; do
      echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
      $bench fanout --preset "$p" --servers herald,nats,mosquitto,ws
    done
    ;;
  *)
    $bench fanout --preset "$1" --servers "${2:-herald,nats,mosquitto,ws}"
    ;;
esac
