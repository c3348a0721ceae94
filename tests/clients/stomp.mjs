// A @stomp/stompjs 7 client driven by Herald's end-to-end tests: options as one JSON argument,
// commands as JSON lines on stdin, everything that happens as JSON lines on stdout.
//
// Options: url, connectHeaders (CONNECT headers: Authorization, passcode, token, ...),
// heartbeat ([outgoing, incoming] ms, default [0, 0]), versions (default ["1.2", "1.1", "1.0"]),
// protocols (WebSocket sub-protocols offered, default stompjs's own for `versions`), ca (PEM file
// for wss), subscribe ([{destination, id, ack, receipt, headers}], sent once connected;
// `headers`: more SUBSCRIBE headers, e.g. offset and epoch to resume), debug (print
// stompjs's debug lines, which include heart-beats: `<<< PONG`), sockjs ({transports: [...]}:
// connect through sockjs-client to `url` (http://.../sockjs/{project}) with only those
// transports, e.g. ["xhr-polling"]; the `open` event names the transport used). Messages of client
// acknowledgement modes are acknowledged only on command.
// Commands: {"subscribe": {destination, id, ack, receipt}}, {"unsubscribe": {id, receipt}},
// {"ack": ackHeader}, {"nack": ackHeader}, {"send": {destination, body, receipt}},
// {"raw": text} (sent as is on the WebSocket), {"disconnect": true} (stompjs's DISCONNECT with
// its receipt, then the close), {"end": true}.
// Events: ready (the script runs), upgrade (the chosen sub-protocol), open (SockJS: transport), connect (CONNECTED
// headers), subscribed, message, receipt, stomp_error (ERROR frame), ws_close (the WebSocket
// close code), ws_error, debug, closed.
import fs from 'node:fs';
import readline from 'node:readline';
import { Client, Versions } from '@stomp/stompjs';
import WebSocket from 'ws';
import SockJS from 'sockjs-client';

const opts = JSON.parse(process.argv[2] ?? '{}');
const out = (event, fields = {}) => process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');

const versions = new Versions(opts.versions ?? ['1.2', '1.1', '1.0']);
const wsOptions = {};
if (opts.ca) {
  wsOptions.ca = fs.readFileSync(opts.ca);
}
let socket = null;
// Messages of client acknowledgement modes, by their `ack` header (or message-id before 1.2).
const unacked = new Map();
const subscriptions = new Map();

const client = new Client({
  brokerURL: opts.url,
  connectHeaders: opts.connectHeaders ?? {},
  heartbeatOutgoing: opts.heartbeat?.[0] ?? 0,
  heartbeatIncoming: opts.heartbeat?.[1] ?? 0,
  stompVersions: versions,
  reconnectDelay: 0,
  connectionTimeout: 20_000,
  webSocketFactory: () => {
    if (opts.sockjs) {
      socket = new SockJS(opts.url, null, { transports: opts.sockjs.transports });
      socket.addEventListener('open', () => out('open', { transport: socket.transport }));
      socket.addEventListener('close', (e) => out('ws_close', { code: e.code, reason: e.reason }));
      return socket;
    }
    socket = new WebSocket(opts.url, opts.protocols ?? versions.protocolVersions(), wsOptions);
    socket.on('upgrade', (res) => out('upgrade', { protocol: res.headers['sec-websocket-protocol'] ?? null }));
    socket.on('close', (code, reason) => out('ws_close', { code, reason: reason.toString() }));
    socket.on('error', (e) => out('ws_error', { message: e.message }));
    return socket;
  },
  debug: opts.debug ? (text) => out('debug', { text }) : () => {},
  onConnect: (frame) => {
    out('connect', { headers: frame.headers });
    for (const s of opts.subscribe ?? []) {
      subscribe(s);
    }
  },
  onStompError: (frame) => out('stomp_error', { headers: frame.headers, message: frame.headers.message ?? null, body: frame.body }),
  onUnhandledReceipt: (frame) => out('receipt', { id: frame.headers['receipt-id'], headers: frame.headers }),
  onUnhandledMessage: (m) => out('unhandled_message', { headers: m.headers, body: m.body }),
  onWebSocketClose: () => out('closed'),
});

function subscribe(s) {
  const headers = {};
  if (s.id) headers.id = s.id;
  if (s.ack) headers.ack = s.ack;
  if (s.receipt) headers.receipt = s.receipt;
  Object.assign(headers, s.headers ?? {});
  const sub = client.subscribe(s.destination, (m) => {
    const key = m.headers.ack ?? m.headers['message-id'];
    if (m.headers.ack !== undefined || (s.ack && s.ack !== 'auto')) {
      unacked.set(key, m);
    }
    out('message', {
      subscription: m.headers.subscription,
      destination: m.headers.destination,
      messageId: m.headers['message-id'],
      ack: m.headers.ack ?? null,
      contentType: m.headers['content-type'] ?? null,
      eventName: m.headers.event ?? null,
      offset: m.headers.offset ?? null,
      epoch: m.headers.epoch ?? null,
      // stompjs keeps every body as bytes; octet-stream ones are printed in base64.
      body: m.headers['content-type'] === 'application/octet-stream'
        ? Buffer.from(m.binaryBody).toString('base64')
        : m.body,
    });
  }, headers);
  subscriptions.set(sub.id, sub);
  out('subscribed', { id: sub.id, destination: s.destination });
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.subscribe) {
    subscribe(cmd.subscribe);
  } else if (cmd.unsubscribe) {
    const u = cmd.unsubscribe;
    const sub = subscriptions.get(u.id);
    if (sub) {
      sub.unsubscribe(u.receipt ? { receipt: u.receipt } : {});
      subscriptions.delete(u.id);
    } else {
      out('error', { message: `no subscription ${u.id}` });
    }
  } else if (cmd.ack !== undefined || cmd.nack !== undefined) {
    const key = cmd.ack ?? cmd.nack;
    const m = unacked.get(key);
    if (!m) {
      out('error', { message: `no unacknowledged message ${key}` });
      return;
    }
    unacked.delete(key);
    if (cmd.ack !== undefined) m.ack(); else m.nack();
    out('acked', { key, nack: cmd.nack !== undefined });
  } else if (cmd.send) {
    const s = cmd.send;
    client.publish({ destination: s.destination, body: s.body ?? '', headers: s.receipt ? { receipt: s.receipt } : {} });
  } else if (cmd.raw !== undefined) {
    socket?.send(cmd.raw);
  } else if (cmd.disconnect) {
    // stompjs sends DISCONNECT with a receipt of its own and waits for it before closing.
    client.deactivate().then(() => out('deactivated'));
  } else if (cmd.end) {
    process.exit(0);
  }
});

out('ready');
client.activate();
