// Drives one HeraldClient for the end-to-end tests (tests/tests/js_client.rs), in Node and in a
// browser page alike: `drive(Herald, opts, out)` connects a client built from `opts.client`
// and reports everything it sees through `out` as plain objects ({"event": ...}, a message's own
// `event` as `name`); the function it
// returns takes commands:
//   {"subscribe": G} / {"unsubscribe": G}   answered by subscribed / subscribe_failed / unsubscribed
//   {"token": T}                            answers the pending token request (opts.askToken)
//   {"positions": true} / {"state": true}   report positions() / state and transport
//   {"close": true}                         close() the client
// With `opts.askToken`, the client's token is a function that reports {"event":"token", reason,
// code} and waits for the test's {"token": T}.
export function drive(Herald, opts, out) {
  const waiting = [];
  const o = { ...opts.client };
  if (opts.askToken)
    o.token = (req) => {
      out({ event: "token", ...req });
      return new Promise((res) => waiting.push(res));
    };
  const c = new Herald.HeraldClient(o);
  const report = out;
  out = (e) => report({ ...e, at: Date.now() });
  c.on("open", (w) => out({ event: "open", ...w, transport: c.transport }));
  c.on("message", (m) => {
    const bytes = m.b64 === undefined ? undefined : [...Herald.decodeBase64(m.b64)];
    out({ ...m, event: "message", name: m.event, bytes });
  });
  c.on("resumed", (r) => out({ event: "resumed", ...r }));
  c.on("acked", (p) => out({ event: "acked", ...p }));
  c.on("error", (e) => out({ event: "error", code: e.code, message: e.message }));
  c.on("close", (e) => out({ event: "close", ...e, state: c.state, known: Herald.closeCodeName(e.code) !== undefined }));
  for (const name of opts.events ?? []) c.onEvent(name, (data, m) => out({ event: "typed", name, data, offset: m.offset }));
  c.connect();
  return (cmd) => {
    if (cmd.token) waiting.shift()?.(cmd.token);
    else if (cmd.subscribe)
      c.subscribe(cmd.subscribe).then(
        () => out({ event: "subscribed", group: cmd.subscribe }),
        (e) => out({ event: "subscribe_failed", group: cmd.subscribe, code: e.code }),
      );
    else if (cmd.unsubscribe)
      c.unsubscribe(cmd.unsubscribe).then(
        () => out({ event: "unsubscribed", group: cmd.unsubscribe }),
        (e) => out({ event: "unsubscribe_failed", group: cmd.unsubscribe, code: e.code }),
      );
    else if (cmd.positions) out({ event: "positions", positions: c.positions() });
    else if (cmd.state) out({ event: "state", state: c.state, transport: c.transport });
    else if (cmd.close) c.close();
  };
}
