#!/usr/bin/env python3
"""RSS per idle connection, wss beside ws, in one run.

Starts the release `herald` twice (a plain ws listener, then a wss one with an ECDSA P-256
certificate), opens N connections to each (TLS handshake, upgrade with a token, the welcome
frame read), waits for the server to settle and reports the server's RSS growth per connection
(VmRSS from /proc/PID/status). Sequential clients from this one process; the per-address limits
are switched off for it.

    cargo build --release -p herald && benches/wss-idle.py [connections]
"""
import base64, hashlib, hmac, json, os, re, socket, ssl, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 15000
SECRET = b"0123456789abcdef0123456789abcdef"
HERALD = os.environ.get("SERVER_BIN") or os.path.join(os.path.dirname(__file__), "..", "target", "release", "herald")


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(sub):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "aud": "bench", "exp": int(time.time()) + 3600}).encode())
    sig = b64(hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def run(tls, d):
    listener = '[[edge.listeners]]\naddr = "127.0.0.1:0"\n'
    if tls:
        listener += f'[edge.listeners.tls]\ncert_file = "{d}/cert.pem"\nkey_file = "{d}/key.pem"\n'
    conf = f"""[edge.limits]
per_ip_connect_rate = 0.0
per_ip_max_connections = 0
{listener}
[[projects]]
id = "bench"
[[projects.keys]]
alg = "HS256"
secret = "{SECRET.decode()}"
"""
    path = os.path.join(d, "herald.toml")
    with open(path, "w") as f:
        f.write(conf)
    p = subprocess.Popen(
        [HERALD, "serve", "--config", path, "--grpc-listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=None if os.environ.get("DEBUG") else subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "error"},
        text=True)
    line = p.stdout.readline()
    while not line.startswith("herald ready"):
        if not line:
            raise SystemExit("herald exited before it was ready")
        line = p.stdout.readline()
    addr = re.search(r"listeners=([0-9.]+):(\d+)", line)
    host, port = addr.group(1), int(addr.group(2))
    ctx = ssl.create_default_context(cafile=f"{d}/cert.pem")
    ctx.set_alpn_protocols(["http/1.1"])
    time.sleep(0.5)
    before = rss_kib(p.pid)
    socks = []
    tok = token("idle")
    t0 = time.time()
    for i in range(N):
        # Source addresses spread over 127.0.0.0/8, so the ephemeral ports of one do not run out.
        src = f"127.{10 + i // 62500}.{(i // 250) % 250 + 1}.{i % 250 + 2}"
        s = socket.create_connection((host, port), source_address=(src, 0))
        if tls:
            s = ctx.wrap_socket(s, server_hostname="localhost")
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /ws/bench?token={tok} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        buf = b""
        while b"welcome" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"connection {i} closed: {buf!r}")
            buf += chunk
        socks.append(s)
    took = time.time() - t0
    time.sleep(2)
    after = rss_kib(p.pid)
    for s in socks:
        s.close()
    p.terminate()
    p.wait()
    return before, after, took


with tempfile.TemporaryDirectory() as d:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", f"{d}/key.pem",
                    "-out", f"{d}/cert.pem"], check=True, capture_output=True)
    print(f"| listener | connections | RSS before (KiB) | RSS after (KiB) | KiB per connection | connect time (s) |")
    print("|---|---|---|---|---|---|")
    for tls in (False, True):
        before, after, took = run(tls, d)
        print(f"| {'wss' if tls else 'ws'} | {N} | {before} | {after} | {(after - before) / N:.2f} | {took:.1f} |")
