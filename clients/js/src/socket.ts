/**
 * The sockets the client runs over: a WebSocket-like object made by a factory, so the browser's
 * and Node's WebSocket, the `ws` package and WeChat's `wx.connectSocket` all plug in the same way.
 */

/** What the client needs of a WebSocket. */
export interface Socket {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev?: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev?: unknown) => void) | null;
}

/** Makes a socket to `url`. */
export type SocketFactory = (url: string) => Socket;

/** A WebSocket constructor: the global one (browsers, Node ≥ 22), or the `ws` package's. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => unknown;

/** Sockets made with a WebSocket constructor, offering the `herald.v1` sub-protocol. */
export function webSocket(ctor?: WebSocketConstructor): SocketFactory {
  return (url) => {
    const C = ctor ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!C) throw new Error("no WebSocket: pass one (options.WebSocket)");
    return new C(url, "herald.v1") as Socket;
  };
}

/** The part of WeChat's `SocketTask` the adapter uses. */
export interface WxSocketTask {
  send(o: { data: string }): void;
  close(o: { code?: number; reason?: string }): void;
  onOpen(cb: (res?: unknown) => void): void;
  onMessage(cb: (res: { data: unknown }) => void): void;
  onClose(cb: (res: { code: number; reason: string }) => void): void;
  onError(cb: (res?: unknown) => void): void;
}

/** The part of WeChat's `wx` the adapter uses. */
export interface Wx {
  connectSocket(o: { url: string; header?: Record<string, string> }): WxSocketTask;
}

/** Sockets made with `wx.connectSocket` (WeChat mini programs). No sub-protocol is offered, as
 * a mini program offers none: the server speaks the native protocol without one. */
export function wxSocket(wx: Wx): SocketFactory {
  return (url) => {
    const t = wx.connectSocket({ url });
    const s: Socket = {
      send: (data) => t.send({ data }),
      close: (code, reason) => t.close({ code, reason }),
      onopen: null,
      onmessage: null,
      onclose: null,
      onerror: null,
    };
    t.onOpen((e) => s.onopen?.(e));
    t.onMessage((e) => s.onmessage?.(e));
    t.onClose((e) => s.onclose?.(e));
    t.onError((e) => s.onerror?.(e));
    return s;
  };
}
