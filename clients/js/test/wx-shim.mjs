// A stand-in for WeChat's `wx` in a mini program, behaving as its documentation says of
// wx.connectSocket and SocketTask, backed by a real WebSocket:
// - connectSocket({url, header, protocols}) returns a SocketTask; `protocols` is offered only when
//   given (a mini program offers no sub-protocol by default), and a connection whose server
//   echoes a sub-protocol that was not offered fails, as in a mini program;
// - SocketTask.send({data, success, fail}) fails (fail({errMsg})) unless the socket is open;
// - SocketTask.close({code, reason}); onOpen(cb) with {header}, onMessage(cb) with {data},
//   onClose(cb) with {code, reason}, onError(cb) with {errMsg}.
// Every connectSocket call is reported through `report` ({"event":"wx_connect", url, protocols}).
export function fakeWx(WebSocketImpl, report) {
  return {
    connectSocket(o) {
      if (typeof o?.url !== "string") throw new TypeError("connectSocket: url is required");
      report({ event: "wx_connect", url: o.url, protocols: o.protocols ?? null, header: o.header ?? null });
      const ws = o.protocols ? new WebSocketImpl(o.url, o.protocols) : new WebSocketImpl(o.url);
      const cb = {};
      let failed = false;
      ws.onopen = () => {
        if (!o.protocols && ws.protocol) {
          failed = true;
          cb.error?.({ errMsg: `unexpected sub-protocol ${ws.protocol}` });
          ws.close();
          return;
        }
        cb.open?.({ header: {} });
      };
      ws.onmessage = (e) => cb.message?.({ data: e.data });
      ws.onclose = (e) => {
        if (!failed) cb.close?.({ code: e.code, reason: e.reason });
      };
      ws.onerror = () => cb.error?.({ errMsg: "connectSocket:fail" });
      return {
        send({ data, success, fail }) {
          if (ws.readyState !== 1) return fail?.({ errMsg: "sendSocketMessage:fail WebSocket is not connected" });
          if (typeof data !== "string" && !(data instanceof ArrayBuffer))
            return fail?.({ errMsg: "sendSocketMessage:fail data must be a string or an ArrayBuffer" });
          ws.send(data);
          success?.({ errMsg: "sendSocketMessage:ok" });
        },
        close({ code, reason } = {}) {
          ws.close(code ?? 1000, reason);
        },
        onOpen: (f) => (cb.open = f),
        onMessage: (f) => (cb.message = f),
        onClose: (f) => (cb.close = f),
        onError: (f) => (cb.error = f),
      };
    },
  };
}
