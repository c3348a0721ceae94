//! Bans: users of a project refused at connect, and closed where they are connected, until a
//! time or until lifted (docs/api.md "Bans"). The admin API keeps the list with the projects;
//! every edge holds this lookup table.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// The banned users of every project, each until a time (Unix milliseconds) or until lifted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BanList {
    projects: HashMap<String, HashMap<String, Option<u64>>>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl BanList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bans `user` of `project` until `until_ms` (Unix milliseconds), or until lifted (`None`).
    pub fn insert(&mut self, project: &str, user: &str, until_ms: Option<u64>) {
        self.projects
            .entry(project.to_string())
            .or_default()
            .insert(user.to_string(), until_ms);
    }

    /// Whether `user` of `project` is banned at `now_ms`.
    pub fn is_banned(&self, project: &str, user: &str, now_ms: u64) -> bool {
        self.projects
            .get(project)
            .and_then(|users| users.get(user))
            .is_some_and(|until| until.is_none_or(|t| now_ms < t))
    }

    /// The bans in force at `now_ms`: project, user, and until when (`None`: until lifted).
    pub fn in_force(&self, now_ms: u64) -> impl Iterator<Item = (&str, &str, Option<u64>)> {
        self.projects.iter().flat_map(move |(p, users)| {
            users
                .iter()
                .filter(move |(_, until)| until.is_none_or(|t| now_ms < t))
                .map(move |(u, until)| (p.as_str(), u.as_str(), *until))
        })
    }

    /// Whether no ban is listed.
    pub fn is_empty(&self) -> bool {
        self.projects.values().all(HashMap::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_hold_until_their_time_or_forever() {
        let mut b = BanList::new();
        b.insert("p", "alice", Some(1_000));
        b.insert("p", "bob", None);
        assert!(b.is_banned("p", "alice", 999));
        assert!(!b.is_banned("p", "alice", 1_000));
        assert!(b.is_banned("p", "bob", u64::MAX));
        assert!(!b.is_banned("q", "bob", 0));
        assert!(!b.is_banned("p", "carol", 0));
        let mut now: Vec<_> = b.in_force(1_000).collect();
        now.sort();
        assert_eq!(now, [("p", "bob", None)]);
    }
}
