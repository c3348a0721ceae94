// A client of the `ws` package with permessage-deflate, as browsers negotiate it, driven by
// Herald's end-to-end tests (tests/tests/deflate.rs): options as one JSON argument, commands as
// JSON lines on stdin, events as JSON lines on stdout.
//
// Options: url. Every client message is compressed (threshold 0); server messages are inflated
// by `ws`.
// Commands: {"send": value} (sent as JSON text), {"end": true} (close 1000).
// Events: open (the Sec-WebSocket-Extensions answer), message (data: the parsed JSON text),
// close (code), error.
import readline from 'node:readline';
import WebSocket from 'ws';

const opts = JSON.parse(process.argv[2] ?? '{}');
const out = (event, fields = {}) => process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');

// Offered as Chromium does: `permessage-deflate; client_max_window_bits`.
const ws = new WebSocket(opts.url, {
  perMessageDeflate: { threshold: 0, clientMaxWindowBits: true },
});
let extensions = null;
ws.on('upgrade', (res) => { extensions = res.headers['sec-websocket-extensions'] ?? null; });
ws.on('open', () => out('open', { extensions }));
ws.on('message', (data, isBinary) => out('message', { binary: isBinary, data: JSON.parse(data.toString()) }));
ws.on('close', (code, reason) => { out('close', { code, reason: reason.toString() }); process.exit(0); });
ws.on('error', (e) => out('error', { message: e.message }));

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.send !== undefined) {
    ws.send(JSON.stringify(cmd.send), { compress: true });
  } else if (cmd.end) {
    ws.close(1000);
  }
});
