// One client under Node for tests/tests/js_client.rs: `node test/node.mjs '<options JSON>'`,
// commands as JSON lines on stdin, events as JSON lines on stdout (see harness.mjs).
// Options: {"client": {...ClientOptions}, "askToken": bool, "events": [names], "wx": bool}.
// With "wx", the CommonJS bundle runs over wxSocket() and the fake `wx` of wx-shim.mjs, as in a
// mini program; otherwise the ES module bundle over Node's global WebSocket.
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { drive } from "./harness.mjs";
import { fakeWx } from "./wx-shim.mjs";

const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
if (typeof WebSocket !== "function") {
  console.error("no global WebSocket: Node 22, or Node 20/21 with --experimental-websocket");
  process.exit(2);
}
const opts = JSON.parse(process.argv[2]);
let Herald;
if (opts.wx) {
  Herald = createRequire(import.meta.url)("../dist/herald.cjs");
  opts.client.socket = Herald.wxSocket(fakeWx(WebSocket, out));
} else Herald = await import("../dist/herald.mjs");
const run = drive(Herald, opts, out);
out({ event: "ready" });
const rl = createInterface({ input: process.stdin });
rl.on("line", (l) => l.trim() && run(JSON.parse(l)));
rl.on("close", () => process.exit(0));
