// An mqtt.js 5 client driven by Herald's end-to-end tests: options as one JSON argument,
// commands as JSON lines on stdin, everything that happens as JSON lines on stdout.
//
// Options: url, username, password, clientId, version (3, 4 or 5), clean (default true),
// keepalive (seconds, default 60), subprotocol (default true; false: offer none, like a WeChat
// mini program, and fail if the server answers with one), ca (PEM file for wss), noAck (never
// acknowledge QoS 1 messages), properties (5.0 CONNECT properties), subscribe ({topic: qos},
// sent once connected), reconnectPeriod (ms; default 0: no reconnect after a lost connection).
// Commands: {"subscribe": {topic: qos}}, {"unsubscribe": [topic]},
// {"publish": {"topic", "payload", "qos"}}, {"end": true}.
// Events: ready (the script runs), connect, suback, unsuback, message, puback, error, disconnect
// (5.0 server DISCONNECT), ws_close (the WebSocket close code), close, reconnect (an attempt).
import fs from 'node:fs';
import readline from 'node:readline';
import mqtt from 'mqtt';
import WebSocket from 'ws';

const opts = JSON.parse(process.argv[2] ?? '{}');
const out = (event, fields = {}) => process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');

const version = opts.version ?? 4;
const wsOptions = {};
if (opts.ca) {
  wsOptions.ca = fs.readFileSync(opts.ca);
}
const client = mqtt.connect(opts.url, {
  username: opts.username,
  password: opts.password,
  clientId: opts.clientId ?? '',
  protocolVersion: version,
  protocolId: version === 3 ? 'MQIsdp' : 'MQTT',
  clean: opts.clean ?? true,
  keepalive: opts.keepalive ?? 60,
  reconnectPeriod: opts.reconnectPeriod ?? 0,
  connectTimeout: 20_000,
  properties: opts.properties,
  wsOptions,
  // mqtt.js offers `mqtt` (or `mqttv3.1`) as sub-protocol; a mini program offers nothing.
  createWebsocket: (url, protocols) => {
    const ws = new WebSocket(url, opts.subprotocol === false ? [] : protocols, wsOptions);
    ws.on('upgrade', (res) => out('upgrade', { protocol: res.headers['sec-websocket-protocol'] ?? null }));
    ws.on('close', (code, reason) => out('ws_close', { code, reason: reason.toString() }));
    ws.on('error', (e) => out('ws_error', { message: e.message }));
    return ws;
  },
});

const msg = (topic, message, packet) => ({
  topic,
  payload: message.toString('utf8'),
  qos: packet.qos,
  dup: packet.dup,
  retain: packet.retain,
  messageId: packet.messageId ?? null,
});

if (opts.noAck) {
  // Messages are handled as usual but no PUBACK leaves: mqtt.js reads the next packet only
  // once the previous one is handled, so swallowing the acknowledgement is the only way to
  // leave messages unacknowledged and still receive the following ones.
  const send = client._sendPacket.bind(client);
  client._sendPacket = (packet, cb, ...rest) => {
    if (packet.cmd === 'puback') {
      if (cb) cb();
      return;
    }
    send(packet, cb, ...rest);
  };
}

client.on('connect', (connack) => {
  out('connect', {
    sessionPresent: connack.sessionPresent,
    code: connack.returnCode ?? connack.reasonCode ?? 0,
    properties: connack.properties ?? null,
  });
  if (opts.subscribe) {
    subscribe(opts.subscribe);
  }
});
client.on('message', (topic, message, packet) => out('message', msg(topic, message, packet)));
client.on('error', (e) => out('error', { message: e.message, code: e.code ?? null }));
client.on('disconnect', (packet) => out('disconnect', {
  code: packet.reasonCode ?? 0,
  reason: packet.properties?.reasonString ?? null,
}));
client.on('close', () => out('close'));
client.on('reconnect', () => out('reconnect'));
client.on('packetreceive', (packet) => {
  if (packet.cmd === 'puback' || packet.cmd === 'pubrec') {
    out('puback', { messageId: packet.messageId, code: packet.reasonCode ?? 0 });
  }
});

function subscribe(topics) {
  // `codes`: the granted QoS per topic; on a refusal, `code` is the first failure's return
  // (3.1.1) or reason (5.0) code.
  const wanted = Object.fromEntries(Object.entries(topics).map(([t, qos]) => [t, { qos }]));
  client.subscribe(wanted, (err, granted, packet) => out('suback', {
    error: err?.message ?? null,
    code: err?.code ?? null,
    codes: err ? null : (packet?.granted ?? granted?.map((g) => g.qos) ?? null),
  }));
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.subscribe) {
    subscribe(cmd.subscribe);
  } else if (cmd.unsubscribe) {
    client.unsubscribe(cmd.unsubscribe, (err, packet) => out('unsuback', {
      error: err?.message ?? null,
      codes: packet?.reasonCode ?? null,
    }));
  } else if (cmd.publish) {
    const p = cmd.publish;
    client.publish(p.topic, p.payload ?? '', { qos: p.qos ?? 0 }, (err) => {
      out('published', { error: err?.message ?? null });
    });
  } else if (cmd.end) {
    client.end(false, () => {
      out('ended');
      process.exit(0);
    });
  }
});
out('ready');
