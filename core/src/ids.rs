//! Validated identifiers.
//!
//! Project ids are `[a-z0-9_-]{1,64}`. User ids and group names are `[A-Za-z0-9_@=-]{1,128}`.
//! None of these alphabets holds `.`, `*`, `>`, whitespace, `{` or `}`, so an identifier can never
//! act as a NATS subject wildcard or token separator, nor as a Redis Cluster hash tag.

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

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $alphabet:literal, $ok:expr) => {
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
                check($kind, s, $max, $alphabet, $ok)
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
    ProjectId, "project id", 64, "[a-z0-9_-]", project_char
);
id_type!(
    /// A user id: the `sub` claim of a client token.
    UserId, "user id", 128, "[A-Za-z0-9_@=-]", name_char
);
id_type!(
    /// A group name.
    GroupId, "group name", 128, "[A-Za-z0-9_@=-]", name_char
);
id_type!(
    /// An edge node's id, unique in a cluster.
    EdgeId, "edge id", 64, "[a-z0-9_-]", project_char
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_wildcards_separators_and_hash_tags() {
        for bad in ["a.*", ">", "a.b", "*", "{x}", "a b", "", "ü"] {
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
}
