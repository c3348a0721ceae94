//! Types and seams shared by Herald's edge and router.
//!
//! # Layout
//! - [`backoff`]: retry delays with jitter.
//! - [`bans`]: banned users of each project, until a time or until lifted.
//! - [`ids`]: validated identifiers (project, user, group, edge) and their alphabets.
//! - [`codes`]: every client-facing close code, in one table.
//! - [`projects`]: the project (tenant) configuration: JWT keys and API keys.
//! - [`registry`]: the [`Registry`](registry::Registry) trait (where interest lies) and its
//!   in-process implementation.
//! - [`bus`]: the [`Bus`](bus::Bus) trait (how envelopes and operator calls reach edges) and its
//!   in-process implementation.
//! - [`history`]: the [`History`](history::History) trait (recoverable streams with offsets and
//!   epochs) and its in-process implementation.
//! - [`presence`]: presence events (a user's first connection in a group arrived, its last
//!   left) and the [`Announcer`](presence::Announcer) that sends them to the group's edges.
//! - [`sessions`]: the [`Sessions`](sessions::Sessions) trait (where a client that comes back
//!   stood: subscriptions and acknowledged positions) and its in-process implementation.
//! - [`telemetry`]: every metric Herald records, in one list (names, kinds, help, histogram
//!   buckets), and the latency [`Timer`](telemetry::Timer).
//! - [`trace`]: OpenTelemetry spans of a publish through router, bus and edges, off unless an
//!   exporter is configured.
#![deny(rust_2018_idioms)]

pub mod backoff;
pub mod bans;
pub mod bus;
pub mod codes;
pub mod history;
pub mod ids;
pub mod presence;
pub mod projects;
pub mod registry;
pub mod sessions;
pub mod telemetry;
pub mod trace;

pub use herald_proto as proto;
