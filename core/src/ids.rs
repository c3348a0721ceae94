//! Validated identifiers.
//!
//! Project ids are `[a-z0-9_-]{1,64}`. User ids are `[A-Za-z0-9_@=-]{1,128}`; group names
//! `[A-Za-z0-9_@=/-]{1,128}`, where `/` separates levels as in an MQTT topic: never first or
//! last, never doubled, and no group starts with `user/` (the MQTT topic of a user's own
//! messages). None of these alphabets holds `.`, `*`, `>`, `+`, `#`, whitespace, `{` or `}`, so
//! an identifier can never act as a NATS subject wildcard or token separator, an MQTT wildcard,
//! nor as a Redis Cluster hash tag.
//! A connection id is `<edge id>-<number>` ([`ConnectionId`]).

use std::fmt;
use std::sync::Arc;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("{kind} is empty")]
    Empty {
        /// Which identifier.
        kind: &'static str,
    },
    /// The identifier is longer than allowed.
    #[error("{kind} is longer than {max} bytes")]
    TooLong {
        /// Which identifier.
        kind: &'static str,
        /// The maximum length.
        max: usize,
    },
    /// The identifier holds a character outside its alphabet.
    #[error("{kind} holds a character outside {alphabet}")]
    BadChar {
        /// Which identifier.
        kind: &'static str,
        /// The allowed alphabet.
        alphabet: &'static str,
    },
    /// The identifier breaks a rule of its shape (a group name's `/` or reserved prefix).
    #[error("{kind} {rule}")]
    Shape {
        /// Which identifier.
        kind: &'static str,
        /// The rule, as a phrase after the identifier's name.
        rule: &'static str,
    },
}

fn check(
    kind: &'static str,
    s: &str,
    max: usize,
    alphabet: &'static str,
    ok: fn(u8) -> bool,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if !s.bytes().all(ok) {
        return Err(IdError::BadChar { kind, alphabet });
    }
    Ok(())
}

fn project_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
}

fn name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'@' | b'=')
}

fn group_char(b: u8) -> bool {
    name_char(b) || b == b'/'
}

/// The prefix no group name may take: `user/{sub}` is a user's own MQTT topic.
pub const RESERVED_GROUP_PREFIX: &str = "user/";

fn no_shape(_: &str) -> Result<(), IdError> {
    Ok(())
}

fn group_shape(s: &str) -> Result<(), IdError> {
    let kind = "group name";
    if s.starts_with('/') || s.ends_with('/') || s.contains("//") {
        return Err(IdError::Shape {
            kind,
            rule: "has an empty level (a / first, last or doubled)",
        });
    }
    if s.starts_with(RESERVED_GROUP_PREFIX) {
        return Err(IdError::Shape {
            kind,
            rule: "starts with user/ (reserved for a user's own messages)",
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $alphabet:literal, $ok:expr, $shape:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The longest accepted identifier, in bytes.
            pub const MAX_LEN: usize = $max;
            /// The accepted alphabet, as documented.
            pub const ALPHABET: &'static str = $alphabet;

            /// Validates `s` and wraps it.
            pub fn new(s: &str) -> Result<Self, IdError> {
                Self::validate(s)?;
                Ok(Self(Arc::from(s)))
            }

            /// Checks `s` without allocating.
            pub fn validate(s: &str) -> Result<(), IdError> {
                check($kind, s, $max, $alphabet, $ok)?;
                $shape(s)
            }

            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A project (tenant) id.
    ProjectId, "project id", 64, "[a-z0-9_-]", project_char, no_shape
);
id_type!(
    /// A user id: the `sub` claim of a client token.
    UserId, "user id", 128, "[A-Za-z0-9_@=-]", name_char, no_shape
);
id_type!(
    /// A group name (also an MQTT topic: `/` separates levels).
    GroupId, "group name", 128, "[A-Za-z0-9_@=/-]", group_char, group_shape
);
id_type!(
    /// An edge node's id, unique in a cluster.
    EdgeId, "edge id", 64, "[a-z0-9_-]", project_char, no_shape
);

/// A connection's public id: `<edge id>-<number>`, the number in decimal without leading zeros.
/// Edge ids may hold `-`, numbers never do, so the last `-` separates them; each id has exactly
/// one spelling (`e1-07` names no connection). Ids order by edge id, then number: the order of
/// a connection listing.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    edge: EdgeId,
    number: u64,
}

impl ConnectionId {
    /// The form, as documented.
    pub const FORM: &'static str = "<edge id>-<number>";

    /// The id of connection `number` of `edge`.
    pub fn new(edge: EdgeId, number: u64) -> Self {
        Self { edge, number }
    }

    /// The edge holding the connection.
    pub fn edge(&self) -> &EdgeId {
        &self.edge
    }

    /// The connection's number on its edge.
    pub fn number(&self) -> u64 {
        self.number
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.edge, self.number)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl std::str::FromStr for ConnectionId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        const KIND: &str = "connection id";
        let malformed = IdError::Shape {
            kind: KIND,
            rule: "is not of the form <edge id>-<number>",
        };
        if s.is_empty() {
            return Err(IdError::Empty { kind: KIND });
        }
        let (edge, number) = s.rsplit_once('-').ok_or(malformed.clone())?;
        let canonical = !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && (number == "0" || !number.starts_with('0'));
        if !canonical {
            return Err(malformed);
        }
        let number = number.parse().map_err(|_| malformed)?;
        Ok(Self {
            edge: EdgeId::new(edge)?,
            number,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_wildcards_separators_and_hash_tags() {
        for bad in [
            "a.*", ">", "a.b", "*", "{x}", "a b", "", "ü", "a/+", "#", "+",
        ] {
            assert!(UserId::new(bad).is_err(), "{bad:?} accepted");
            assert!(GroupId::new(bad).is_err(), "{bad:?} accepted");
            assert!(ProjectId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ProjectId::new("Demo").is_err());
        assert!(ProjectId::new(&"a".repeat(65)).is_err());
        assert!(UserId::new(&"a".repeat(128)).is_ok());
        assert!(UserId::new("alice@example-1=").is_ok());
        assert!(ProjectId::new("demo_1-x").is_ok());
    }

    #[test]
    fn group_names_have_levels_but_no_empty_one_nor_a_user_topic() {
        for good in ["sport/f1", "a/b/c", "user", "users/x", "u/ser", "x/user/y"] {
            assert!(GroupId::new(good).is_ok(), "{good:?} refused");
        }
        for bad in ["/a", "a/", "a//b", "/", "user/bob", "user/"] {
            assert!(
                matches!(GroupId::new(bad), Err(IdError::Shape { .. })),
                "{bad:?} accepted"
            );
        }
        for bad in ["a/b", "user/bob"] {
            assert!(UserId::new(bad).is_err(), "{bad:?} accepted as a user");
            assert!(
                ProjectId::new(bad).is_err(),
                "{bad:?} accepted as a project"
            );
        }
    }

    #[test]
    fn connection_ids_have_one_spelling() {
        let edge = EdgeId::new("edge-1").expect("valid");
        let id = ConnectionId::new(edge.clone(), 7);
        assert_eq!(id.to_string(), "edge-1-7");
        assert_eq!("edge-1-7".parse::<ConnectionId>(), Ok(id));
        let max = ConnectionId::new(edge, u64::MAX);
        assert_eq!(max.to_string().parse::<ConnectionId>(), Ok(max));
        assert_eq!("e-0".parse::<ConnectionId>().map(|c| c.number()), Ok(0));
        for bad in [
            "",
            "nonsense",
            "e1-",
            "-7",
            "e1-07",
            "e1-+7",
            "e1-7 ",
            "E1-7",
            "e1-x",
            "e1.a-7",
            "e1-18446744073709551616",
        ] {
            assert!(bad.parse::<ConnectionId>().is_err(), "{bad:?} accepted");
        }
    }
}
