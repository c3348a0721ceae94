//! The destinations a STOMP client may subscribe to, as the Spring push center had them:
//!
//! | destination | receives |
//! |---|---|
//! | `/topic/{project}` | the project's broadcasts |
//! | `/topic/{project}/{group}` | the messages of group `{group}` (the token's `channels` decide) |
//! | `/user/queue/{name}` | the user's own messages: those published with event `{name}`, and those published without an event |
//!
//! `{project}` must be the connection's own project.

use herald_core::ids::GroupId;

/// What a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `/topic/{project}`: broadcasts.
    Broadcast,
    /// `/topic/{project}/{group}`.
    Group(GroupId),
    /// `/user/queue/{name}`.
    UserQueue(Box<str>),
}

/// Why a destination cannot be subscribed to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// Neither `/topic/...` nor `/user/queue/...`.
    #[error(
        "unknown destination (use /topic/{{project}}, /topic/{{project}}/{{group}} or /user/queue/{{name}})"
    )]
    Unknown,
    /// `/topic/{project}` names another project than the token's.
    #[error("destination names another project")]
    OtherProject,
    /// The group part is not a valid group name.
    #[error("invalid group name ({0})")]
    BadGroup(String),
    /// The queue name is outside `[A-Za-z0-9_.:-]{{1,64}}`.
    #[error("invalid queue name (1 to 64 bytes of [A-Za-z0-9_.:-])")]
    BadQueue,
}

/// The longest queue name (as the longest event name, which it matches).
pub const MAX_QUEUE_LEN: usize = 64;

/// Reads `dest` for a connection of `project`.
pub fn parse_destination(dest: &str, project: &str) -> Result<Destination, DestinationError> {
    if let Some(rest) = dest.strip_prefix("/topic/") {
        let (p, group) = match rest.split_once('/') {
            Some((p, g)) => (p, Some(g)),
            None => (rest, None),
        };
        if p != project {
            return Err(DestinationError::OtherProject);
        }
        return match group {
            None => Ok(Destination::Broadcast),
            Some(g) => GroupId::new(g)
                .map(Destination::Group)
                .map_err(|e| DestinationError::BadGroup(e.to_string())),
        };
    }
    if let Some(name) = dest.strip_prefix("/user/queue/") {
        return if valid_queue(name) {
            Ok(Destination::UserQueue(name.into()))
        } else {
            Err(DestinationError::BadQueue)
        };
    }
    Err(DestinationError::Unknown)
}

/// Whether `name` may follow `/user/queue/`: the event alphabet, 1 to 64 bytes.
fn valid_queue(name: &str) -> bool {
    (1..=MAX_QUEUE_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_center_destinations() {
        assert_eq!(
            parse_destination("/topic/demo", "demo"),
            Ok(Destination::Broadcast)
        );
        assert_eq!(
            parse_destination("/topic/demo/shanghai", "demo"),
            Ok(Destination::Group(GroupId::new("shanghai").expect("valid")))
        );
        assert_eq!(
            parse_destination("/user/queue/orders.v1", "demo"),
            Ok(Destination::UserQueue("orders.v1".into()))
        );
    }

    #[test]
    fn refusals() {
        use DestinationError::*;
        assert_eq!(
            parse_destination("/topic/other/g", "demo"),
            Err(OtherProject)
        );
        assert_eq!(parse_destination("/topic/other", "demo"), Err(OtherProject));
        assert_eq!(parse_destination("/topic/", "demo"), Err(OtherProject));
        assert!(matches!(
            parse_destination("/topic/demo/", "demo"),
            Err(BadGroup(_))
        ));
        assert!(matches!(
            parse_destination("/topic/demo/a*b", "demo"),
            Err(BadGroup(_))
        ));
        assert_eq!(parse_destination("/user/queue/", "demo"), Err(BadQueue));
        assert_eq!(parse_destination("/user/queue/a/b", "demo"), Err(BadQueue));
        assert_eq!(
            parse_destination(&format!("/user/queue/{}", "a".repeat(65)), "demo"),
            Err(BadQueue)
        );
        for other in [
            "",
            "/queue/x",
            "/user/alice/queue/x",
            "topic/demo",
            "/app/x",
        ] {
            assert_eq!(parse_destination(other, "demo"), Err(Unknown), "{other}");
        }
    }
}
