#!/usr/bin/env bash
# Full and resumed TLS handshakes per second on one core: Herald's wss listener beside nginx,
# both pinned to core 0 (taskset), the same ECDSA P-256 certificate, the same clients:
# `openssl s_time` processes pinned to core 1, each fetching `/` (both servers answer 404), so
# TLS 1.3 tickets are read and reused. Reports, per server, TLS version and handshake kind, the
# handshakes done per wall second and per second of the server's own CPU time
# (/proc/PID/stat), the figure that does not depend on whether the clients kept up.
#
#   cargo build --release -p herald && benches/tls-handshakes.sh [seconds] [clients]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
clients="${2:-4}"
herald=target/release/herald
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$herald" ] || { echo "build it: cargo build --release -p herald" >&2; exit 1; }
[ -x "$nginx" ] || { echo "nginx not found: apt-get install nginx" >&2; exit 1; }
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
hport=18443
nport=18444
cat > "$dir/herald.toml" <<TOML
[edge.limits]
per_ip_connect_rate = 0.0
per_ip_max_connections = 0
[[edge.listeners]]
addr = "127.0.0.1:$hport"
[edge.listeners.tls]
cert_file = "$dir/cert.pem"
key_file = "$dir/key.pem"
[[projects]]
id = "bench"
[[projects.keys]]
alg = "HS256"
secret = "0123456789abcdef0123456789abcdef"
TOML
cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$nport ssl;
        ssl_certificate $dir/cert.pem;
        ssl_certificate_key $dir/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench:10m;
        location / { return 404; }
    }
}
CONF
RUST_LOG=error taskset -c 0 "$herald" serve --config "$dir/herald.toml" \
  --grpc-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >/dev/null 2>&1 &
hpid=$!
# One process (no master), like Herald's one process.
taskset -c 0 "$nginx" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off; master_process off;' &
npid=$!
sleep 1

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # name pid port version mode
  local before after total=0 out
  before=$(cpu_ticks "$2")
  for _ in $(seq "$clients"); do
    taskset -c 1 openssl s_time -connect "127.0.0.1:$3" "-$4" "-$5" -time "$secs" -www / \
      >"$dir/out.$BASHPID.$RANDOM" 2>&1 &
  done
  wait $(jobs -p | grep -v -e "^$hpid\$" -e "^$npid\$")
  after=$(cpu_ticks "$2")
  for f in "$dir"/out.*; do
    out=$(grep -m1 -oE '^[0-9]+ connections in' "$f" | awk '{print $1}')
    total=$((total + ${out:-0}))
    rm -f "$f"
  done
  local cpu=$(( after - before ))
  awk -v n="$1" -v v="$4" -v m="$5" -v t="$total" -v s="$secs" -v c="$cpu" 'BEGIN {
    printf "| %s | %s | %s | %d | %.0f | %.2f | %.0f |\n", n, v, (m == "new" ? "full" : "resumed"),
      t, t / s, c / 100, (c > 0 ? t / (c / 100) : 0) }'
}

echo "| server | TLS | handshake | handshakes | per wall s | server CPU s | per server CPU s |"
echo "|---|---|---|---|---|---|---|"
for v in tls1_3 tls1_2; do
  for m in new reuse; do
    run herald "$hpid" "$hport" "$v" "$m"
    run nginx "$npid" "$nport" "$v" "$m"
  done
done
