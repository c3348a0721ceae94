#!/usr/bin/env bash
# A local Herald cluster on loopback from Debian packages: redis-server, a 3-node nats-server
# cluster, two edges and two routers (each its own `herald serve` process).
#
#   deploy/cluster.sh start     # start everything, print how to connect and publish
#   deploy/cluster.sh status    # what runs
#   deploy/cluster.sh stop      # stop everything (SIGTERM, then SIGKILL after 10 s)
#
# Environment: HERALD_BIN (default: target/release/herald, else target/debug/herald, else built),
# HERALD_CLUSTER_DIR (state, logs, config; default /tmp/herald-cluster), BASE_PORT (default 17000:
# redis BASE, nats BASE+1..3 (routes +11..13, monitoring +21..23), edges ws BASE+31/32, routers
# grpc BASE+41/42, admin BASE+51..54).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
dir="${HERALD_CLUSTER_DIR:-/tmp/herald-cluster}"
base="${BASE_PORT:-17000}"
redis_port=$base
nats_ports=($((base + 1)) $((base + 2)) $((base + 3)))
route_ports=($((base + 11)) $((base + 12)) $((base + 13)))
monitor_ports=($((base + 21)) $((base + 22)) $((base + 23)))
edge_ports=($((base + 31)) $((base + 32)))
router_ports=($((base + 41)) $((base + 42)))
admin_ports=($((base + 51)) $((base + 52)) $((base + 53)) $((base + 54)))

need() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || {
    echo "cluster.sh: $1 not found (Debian: apt-get install $2)" >&2
    exit 1
  }
}

herald_bin() {
  if [ -n "${HERALD_BIN:-}" ]; then echo "$HERALD_BIN"; return; fi
  for b in "$root/target/release/herald" "$root/target/debug/herald"; do
    if [ -x "$b" ]; then echo "$b"; return; fi
  done
  (cd "$root" && cargo build -q --release -p herald) >&2
  echo "$root/target/release/herald"
}

# Waits until `file` holds a line starting with `prefix`; fails after 20 s.
wait_line() {
  local file=$1 prefix=$2 i
  for i in $(seq 1 200); do
    if grep -q "^$prefix" "$file" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "cluster.sh: no '$prefix' in $file after 20 s:" >&2
  tail -n 20 "$file" >&2 || true
  return 1
}

wait_port() {
  local port=$1 i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "cluster.sh: nothing listens on port $port after 20 s" >&2
  return 1
}

# Starts a process in the background with its log; records its pid under `name`.
spawn() {
  local name=$1; shift
  "$@" >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

write_config() {
  local secret api_key
  secret="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  api_key="key-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  cat >"$dir/herald.toml" <<EOF
# Written by deploy/cluster.sh: a development project on a local cluster.
[cluster]
registry = "redis"
redis_urls = ["redis://127.0.0.1:$redis_port"]
bus = "nats"
nats_urls = ["nats://127.0.0.1:${nats_ports[0]}", "nats://127.0.0.1:${nats_ports[1]}", "nats://127.0.0.1:${nats_ports[2]}"]
edge_ttl_secs = 15

[[projects]]
id = "demo"
api_keys = ["$api_key"]
[[projects.keys]]
kid = "dev"
alg = "HS256"
secret = "$secret"
EOF
  echo "$secret" >"$dir/secret"
  echo "$api_key" >"$dir/api_key"
}

start() {
  need redis-server redis-server
  need nats-server nats-server
  if [ -e "$dir/redis.pid" ]; then
    echo "cluster.sh: already started (state in $dir); run '$0 stop' first" >&2
    exit 1
  fi
  mkdir -p "$dir"
  # Whatever fails half-way is stopped again.
  trap 'echo "cluster.sh: start failed; stopping what was started" >&2; stop' ERR
  local bin
  bin="$(herald_bin)"
  write_config

  spawn redis redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$dir"
  wait_port "$redis_port"

  local routes="" i
  for i in 0 1 2; do routes+="nats://127.0.0.1:${route_ports[$i]},"; done
  for i in 0 1 2; do
    spawn "nats-$i" nats-server -a 127.0.0.1 -p "${nats_ports[$i]}" -m "${monitor_ports[$i]}" \
      -n "herald-nats-$i" --cluster_name herald --cluster "nats://127.0.0.1:${route_ports[$i]}" \
      --routes "${routes%,}"
  done
  for i in 0 1 2; do wait_port "${nats_ports[$i]}"; done

  for i in 0 1; do
    spawn "edge-$((i + 1))" env -u HERALD_BIN -u HERALD_CLUSTER_DIR RUST_LOG="${RUST_LOG:-info}" HERALD_EDGE__ID="e$((i + 1))" \
      "$bin" serve --config "$dir/herald.toml" --role edge \
      --ws-listen "127.0.0.1:${edge_ports[$i]}" --admin-listen "127.0.0.1:${admin_ports[$i]}"
  done
  for i in 0 1; do
    spawn "router-$((i + 1))" env -u HERALD_BIN -u HERALD_CLUSTER_DIR RUST_LOG="${RUST_LOG:-info}" "$bin" serve \
      --config "$dir/herald.toml" --role router \
      --grpc-listen "127.0.0.1:${router_ports[$i]}" --admin-listen "127.0.0.1:${admin_ports[$((i + 2))]}"
  done
  for n in edge-1 edge-2 router-1 router-2; do wait_line "$dir/$n.log" "herald ready"; done

  local token
  trap - ERR
  token="$("$bin" token --secret "$(cat "$dir/secret")" --kid dev -p demo --sub alice --groups news)"
  cat <<EOF
Herald cluster up (state and logs in $dir):
  redis      127.0.0.1:$redis_port
  nats       127.0.0.1:${nats_ports[0]},${nats_ports[1]},${nats_ports[2]} (monitoring ${monitor_ports[*]})
  edges      e1 ws://127.0.0.1:${edge_ports[0]}  e2 ws://127.0.0.1:${edge_ports[1]}  (admin ${admin_ports[0]}, ${admin_ports[1]})
  routers    http://127.0.0.1:${router_ports[0]}  http://127.0.0.1:${router_ports[1]}  (admin ${admin_ports[2]}, ${admin_ports[3]})

Connect as alice (group news) to either edge:
  websocat 'ws://127.0.0.1:${edge_ports[0]}/ws/demo?token=$token'
Publish through either router:
  export HERALD_ROUTER=http://127.0.0.1:${router_ports[1]} HERALD_API_KEY=$(cat "$dir/api_key")
  $bin publish -p demo --user alice '{"hello":"alice"}'
  $bin list -p demo --user alice
Stop: $0 stop
EOF
}

stop_one() {
  local name=$1 pidfile="$dir/$1.pid" pid i
  [ -e "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "cluster.sh: $name did not stop in 10 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
  echo "stopped $name"
}

stop() {
  # Nodes first (edges deregister from Redis on the way out), then NATS, then Redis.
  for n in edge-1 edge-2 router-1 router-2 nats-0 nats-1 nats-2 redis; do stop_one "$n"; done
}

status() {
  local n pid
  for n in redis nats-0 nats-1 nats-2 edge-1 edge-2 router-1 router-2; do
    if [ -e "$dir/$n.pid" ] && pid="$(cat "$dir/$n.pid")" && kill -0 "$pid" 2>/dev/null; then
      echo "$n: running (pid $pid)"
    else
      echo "$n: stopped"
    fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
