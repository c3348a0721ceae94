/**
 * Herald's client: the native protocol (docs/protocol.md) over WebSocket, with SSE as fallback;
 * for Node, browsers and WeChat mini programs. Guide: docs/client-js.md.
 */

export { decodeBase64 } from "./base64";
export * from "./client";
export * from "./codes";
export * from "./socket";
