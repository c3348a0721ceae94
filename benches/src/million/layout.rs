//! Who connection `i` is: its edge, user and group; which users are sampled for user messages.

use serde::Serialize;

use super::MillionOpts;

/// Who connection `i` is: its edge, user and group; who the sampled users are.
#[derive(Debug, Clone, Copy, clap::Args, Serialize)]
pub struct Layout {
    /// Connections in the run.
    #[arg(long)]
    pub(super) total: u64,
    /// Edges.
    #[arg(long = "edge-count")]
    pub(super) edge_count: u64,
    /// Users: connection i is user `u<i mod users>`, so connections `users..total` are second
    /// devices, on another edge (users is never a multiple of the edge count).
    #[arg(long)]
    pub(super) users: u64,
    /// Groups.
    #[arg(long)]
    pub(super) groups: u64,
    /// Every `sample_every`-th user gets a user message.
    #[arg(long)]
    pub(super) sample_every: u64,
}

impl Layout {
    pub(super) fn new(o: &MillionOpts) -> Self {
        let second = o.connections * o.second_devices_percent.min(50) / 100;
        let mut users = (o.connections - second).max(1);
        if o.edges > 1 && users.is_multiple_of(o.edges) && users < o.connections {
            users += 1;
        }
        Self {
            total: o.connections,
            edge_count: o.edges.max(1),
            users,
            groups: o.groups.max(1),
            sample_every: (users / o.user_sample.max(1)).max(1),
        }
    }
    pub(super) fn edge(&self, i: u64) -> u64 {
        i % self.edge_count
    }
    pub(super) fn user(&self, i: u64) -> u64 {
        i % self.users
    }
    pub(super) fn group(&self, i: u64) -> u64 {
        i % self.groups
    }
    /// Whether connection i should receive the group message (to `g0`).
    pub(super) fn in_group_message(&self, i: u64) -> bool {
        self.group(i) == 0
    }
    /// Whether connection i's user gets a user message.
    pub(super) fn in_user_sample(&self, i: u64) -> bool {
        self.user(i).is_multiple_of(self.sample_every)
    }
    /// The sampled users.
    pub(super) fn sample(&self) -> impl Iterator<Item = u64> {
        (0..self.users).step_by(self.sample_every as usize)
    }
}
