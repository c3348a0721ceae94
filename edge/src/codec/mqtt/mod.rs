//! MQTT 3.1.1 and 5.0 over WebSocket, the server's side: what Herald's clients send and what it
//! answers. The protocol itself is pure functions over bytes (no socket, no session), so every
//! rule is unit-tested; `client` plugs it into the session layer.
//! What is supported and refused is documented in `docs/protocol-mqtt.md`.
//!
//! # Layout
//! - [`packet`]: client packets: the fixed header, reassembly across WebSocket messages, parsing
//!   with a typed [`packet::DecodeError`] for every malformed input.
//! - [`encode`]: server packets as ready WebSocket frames (`CONNACK`, `SUBACK`, `UNSUBACK`,
//!   `PUBACK`, `PINGRESP`, `DISCONNECT`).
//! - [`delivery`]: delivered messages encoded once into a template and completed per
//!   connection without copying the payload; the QoS 1 window.
//! - [`reason`]: reason and return codes, mapped from Herald's close codes.
//! - `client`: the codec over the session layer; `takeover`: client ids held on this edge;
//!   `persist`: persistent sessions through history.

pub(crate) mod client;
pub mod delivery;
pub mod encode;
pub mod packet;
pub(crate) mod persist;
pub mod reason;
pub(crate) mod takeover;
