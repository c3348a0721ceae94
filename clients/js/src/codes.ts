/**
 * Close codes and error-frame codes of the native protocol (docs/protocol.md §9 and §10).
 * `scripts/check.mjs` fails when these differ from `core/src/codes.rs` or the doc's tables.
 */

/** Why a connection closed: the server's codes (protocol.md §9), plus 1006 for a connection
 * that ended without a close frame. Names are those of `CloseCode` in `core/src/codes.rs`. */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  ProtocolError: 1002,
  Abnormal: 1006,
  MessageTooBig: 1009,
  InternalError: 1011,
  AuthRequired: 4001,
  InvalidToken: 4002,
  Forbidden: 4003,
  UnknownProject: 4004,
  TokenExpired: 4005,
  PingTimeout: 4006,
  SlowConsumer: 4008,
  DisconnectedByOperator: 4009,
  RefreshMismatch: 4010,
  TooManyConnections: 4011,
  SessionTakenOver: 4012,
  PublishNotAllowed: 4013,
  Banned: 4014,
  RateLimited: 4029,
} as const;
/** A close code this client knows. */
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];
/** The name of a close code (`"TokenExpired"`). */
export type CloseCodeName = keyof typeof CloseCode;

/** Codes of `error` frames (protocol.md §10): an answer to one client frame; the connection
 * stays open. Names are those of `FrameError` in `core/src/codes.rs`. */
export const ErrorCode = {
  BadFrame: 4400,
  UnknownType: 4401,
  BadToken: 4402,
  NotAllowed: 4403,
  NotRecoverable: 4404,
  BinaryNotSupported: 4415,
  BadName: 4422,
  TooManyGroups: 4429,
  HistoryUnavailable: 4503,
} as const;
/** An error-frame code this client knows. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** The name of a close code, or undefined for a code outside the table. */
export function closeCodeName(code: number): CloseCodeName | undefined {
  for (const k in CloseCode) if (CloseCode[k as CloseCodeName] === code) return k as CloseCodeName;
}
