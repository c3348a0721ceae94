#!/usr/bin/env python3
"""RSS per idle STOMP connection over SockJS transports, beside STOMP over a plain WebSocket, in
one run.

For each client kind in turn, starts the release `herald` afresh, opens N STOMP sessions (token
in CONNECT's `Authorization`, CONNECTED read, one `SUBSCRIBE` to a group with its RECEIPT read),
lets the server settle, and reports its RSS growth per session (VmRSS from /proc/PID/status):

- `stomp-ws`: STOMP over a WebSocket (`/ws/bench`, `v12.stomp`), the peer of the others;
- `sockjs-websocket`: SockJS's `websocket` transport (`/sockjs/bench/0/<id>/websocket`);
- `xhr-streaming`: an `xhr_streaming` response held open, frames sent by `xhr_send` requests;
- `eventsource`: the same with an `eventsource` response.

Sequential clients from this one process, source addresses spread over 127.0.0.0/8; the
per-address limits are switched off for it.

    cargo build --release -p herald && benches/sockjs-idle.py [connections] [kinds,...]
"""
import base64, hashlib, hmac, json, os, re, socket, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 15000
KINDS = (sys.argv[2] if len(sys.argv) > 2 else "stomp-ws,sockjs-websocket,xhr-streaming,eventsource").split(",")
SECRET = b"0123456789abcdef0123456789abcdef"
HERALD = os.environ.get("SERVER_BIN") or os.path.join(os.path.dirname(__file__), "..", "target", "release", "herald")


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(sub):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "aud": "bench", "channels": ["idle"], "exp": int(time.time()) + 3600}).encode())
    sig = b64(hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


TOK = token("idle")
CONNECT = f"CONNECT\naccept-version:1.2\nhost:bench\nheart-beat:0,0\nAuthorization:Bearer {TOK}\n\n\0"
SUBSCRIBE = "SUBSCRIBE\nid:0\ndestination:/topic/bench/idle\nack:auto\nreceipt:1\n\n\0"


def ws_frame(text):
    """A masked client text frame."""
    data = text.encode()
    mask = os.urandom(4)
    head = bytearray([0x81])
    if len(data) < 126:
        head.append(0x80 | len(data))
    else:
        head.append(0x80 | 126)
        head += len(data).to_bytes(2, "big")
    return bytes(head) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def recv_until(s, buf, needle, what):
    while needle not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit(f"{what}: closed: {buf[-300:]!r}")
        buf += chunk
    return buf


def upgrade(host, port, src, path, protocol):
    s = socket.create_connection((host, port), source_address=(src, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    proto = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{proto}"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    return s


def xhr_send(host, port, src, path, messages):
    body = json.dumps(messages).encode()
    s = socket.create_connection((host, port), source_address=(src, 0))
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    reply = recv_until(s, b"", b"\r\n\r\n", "xhr_send")
    if not reply.startswith(b"HTTP/1.1 204"):
        raise SystemExit(f"xhr_send: {reply[:200]!r}")
    s.close()


def open_one(kind, host, port, i):
    # Source addresses spread over 127.0.0.0/8, so the ephemeral ports of one do not run out.
    src = f"127.{10 + i // 62500}.{(i // 250) % 250 + 1}.{i % 250 + 2}"
    session = f"s{i}"
    if kind == "stomp-ws":
        s = upgrade(host, port, src, "/ws/bench", "v12.stomp")
        s.sendall(ws_frame(CONNECT))
        buf = recv_until(s, b"", b"CONNECTED", kind)
        s.sendall(ws_frame(SUBSCRIBE))
        recv_until(s, buf, b"RECEIPT", kind)
        return s
    if kind == "sockjs-websocket":
        s = upgrade(host, port, src, f"/sockjs/bench/0/{session}/websocket", None)
        buf = recv_until(s, b"", b"\x81\x01o", kind)
        s.sendall(ws_frame(json.dumps([CONNECT])))
        buf = recv_until(s, buf, b"CONNECTED", kind)
        s.sendall(ws_frame(json.dumps([SUBSCRIBE])))
        recv_until(s, buf, b"RECEIPT", kind)
        return s
    endpoint = {"xhr-streaming": ("POST", "xhr_streaming", b"\no\n"),
                "eventsource": ("GET", "eventsource", b"data: o\r\n\r\n")}[kind]
    base = f"/sockjs/bench/0/{session}"
    s = socket.create_connection((host, port), source_address=(src, 0))
    s.sendall(f"{endpoint[0]} {base}/{endpoint[1]} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n".encode())
    buf = recv_until(s, b"", endpoint[2], kind)
    xhr_send(host, port, src, f"{base}/xhr_send", [CONNECT])
    buf = recv_until(s, buf, b"CONNECTED", kind)
    xhr_send(host, port, src, f"{base}/xhr_send", [SUBSCRIBE])
    recv_until(s, buf, b"RECEIPT", kind)
    return s


def run(kind, d):
    conf = """[edge]
listen = "127.0.0.1:0"
[edge.limits]
per_ip_connect_rate = 0.0
per_ip_max_connections = 0
[[projects]]
id = "bench"
[[projects.keys]]
alg = "HS256"
secret = "%s"
""" % SECRET.decode()
    path = os.path.join(d, "herald.toml")
    with open(path, "w") as f:
        f.write(conf)
    p = subprocess.Popen(
        [HERALD, "serve", "--config", path, "--grpc-listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=None if os.environ.get("DEBUG") else subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "error"}, text=True)
    line = p.stdout.readline()
    while not line.startswith("herald ready"):
        if not line:
            raise SystemExit("herald exited before it was ready")
        line = p.stdout.readline()
    addr = re.search(r"listeners=([0-9.]+):(\d+)", line)
    host, port = addr.group(1), int(addr.group(2))
    socks = []
    try:
        time.sleep(0.5)
        before = rss_kib(p.pid)
        t0 = time.time()
        for i in range(N):
            socks.append(open_one(kind, host, port, i))
        took = time.time() - t0
        time.sleep(3)
        after = rss_kib(p.pid)
    finally:
        for s in socks:
            s.close()
        p.terminate()
        p.wait()
    return before, after, took


with tempfile.TemporaryDirectory() as d:
    print(f"load before: {os.getloadavg()}")
    print("| client | sessions | RSS before (KiB) | RSS after (KiB) | KiB per session | minus stomp-ws | connect time (s) |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for kind in KINDS:
        before, after, took = run(kind, d)
        per = (after - before) / N
        if base is None:
            base = per
        print(f"| {kind} | {N} | {before} | {after} | {per:.2f} | {per - base:+.2f} | {took:.1f} |", flush=True)
    print(f"load after: {os.getloadavg()}")
