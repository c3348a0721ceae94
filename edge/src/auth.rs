//! Client authentication: JWTs verified with each project's own keys.
//!
//! The key is chosen by the token header's `kid` (or is the project's only key), among the
//! project's configured keys and then its JWK Set's ([`crate::jwks`]), and the algorithm is the
//! one configured (or published) for that key, never the one the header names. `aud` must name
//! the project the client connects to, `exp` and `sub` are required. A banned user is refused
//! whatever its token.

use std::collections::HashMap;
use std::sync::Arc;

use herald_core::bans::BanList;

use herald_core::codes::CloseCode;
use herald_core::ids::{GroupId, UserId};
use herald_core::projects::{KeyAlgorithm, ProjectConfig};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::jwks::{JwksSource, JwksSources};

/// The claims Herald reads from a client token.
#[derive(Debug, Deserialize)]
struct RawClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    channels: Vec<String>,
}

/// A verified client identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user (`sub`).
    pub user: UserId,
    /// Groups joined at connect (`groups` claim).
    pub groups: Vec<GroupId>,
    /// Patterns of groups the client may join itself (`channels` claim).
    pub channels: Vec<String>,
    /// Expiry, Unix seconds (`exp`).
    pub expires_unix: u64,
}

impl Identity {
    /// Whether the `channels` claim lets the client subscribe to `group` itself.
    pub fn may_subscribe(&self, group: &str) -> bool {
        channels_allow(&self.channels, group)
    }
}

/// Whether `channels` patterns allow `group`: a pattern is a group name, or a prefix followed by
/// `*` (`"news-*"`; `"*"` allows every group).
pub fn channels_allow<S: AsRef<str>>(channels: &[S], group: &str) -> bool {
    channels.iter().any(|p| {
        let p = p.as_ref();
        match p.strip_suffix('*') {
            Some(prefix) => group.starts_with(prefix),
            None => p == group,
        }
    })
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The project in the URL is not configured.
    #[error("unknown project")]
    UnknownProject,
    /// No token was presented.
    #[error("no token")]
    Missing,
    /// Not a JWT.
    #[error("malformed token")]
    Malformed,
    /// The `kid` names no key of the project (or is missing where several keys exist).
    #[error("unknown key id")]
    UnknownKid,
    /// The signature does not verify, or the header names another algorithm than the key's.
    #[error("bad signature or algorithm")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `aud` does not name this project.
    #[error("token is for another project")]
    WrongAudience,
    /// A claim is missing or invalid.
    #[error("invalid claims: {0}")]
    BadClaims(String),
    /// The user is banned from the project.
    #[error("user banned")]
    Banned,
}

impl AuthError {
    /// The close code that reports this refusal.
    pub fn close_code(&self) -> CloseCode {
        match self {
            AuthError::UnknownProject => CloseCode::UnknownProject,
            AuthError::Missing => CloseCode::AuthRequired,
            AuthError::Malformed | AuthError::UnknownKid | AuthError::BadSignature => {
                CloseCode::InvalidToken
            }
            AuthError::Expired => CloseCode::TokenExpired,
            AuthError::WrongAudience | AuthError::BadClaims(_) => CloseCode::Forbidden,
            AuthError::Banned => CloseCode::Banned,
        }
    }
}

struct LoadedKey {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// A project's keys: configured ones, and its JWK Set's.
struct ProjectKeys {
    keys: Vec<LoadedKey>,
    jwks: Option<Arc<JwksSource>>,
}

/// The verification keys of every project, loaded from configuration, and the banned users.
pub struct AuthKeys {
    projects: HashMap<String, ProjectKeys>,
    bans: BanList,
    /// What each project keeps for clients to recover (projects with `[projects.history]`).
    history: HashMap<String, herald_core::history::HistoryConfig>,
    /// Projects accepting clients by certificate: the groups they join, the channels they may.
    by_certificate: HashMap<String, (Vec<GroupId>, Vec<String>)>,
    /// Projects accepting `permessage-deflate` (`permessage_deflate = true`).
    deflate: std::collections::HashSet<String>,
    /// Projects that ask for presence events.
    presence_events: std::collections::HashSet<String>,
    /// Projects whose events are posted to their back end.
    webhooks: HashMap<String, herald_core::projects::WebhookConfig>,
}

fn algorithm(alg: KeyAlgorithm) -> Algorithm {
    match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

impl AuthKeys {
    /// What `project` keeps for clients to recover, if anything.
    pub fn history(&self, project: &str) -> Option<&herald_core::history::HistoryConfig> {
        self.history.get(project)
    }

    /// Whether `project` accepts the `permessage-deflate` extension.
    pub fn permessage_deflate(&self, project: &str) -> bool {
        self.deflate.contains(project)
    }

    /// Where `project`'s events are posted, if anywhere.
    pub fn webhook(&self, project: &str) -> Option<&herald_core::projects::WebhookConfig> {
        self.webhooks.get(project)
    }

    /// Whether `project` asks for presence events (`presence_events`).
    pub fn presence_events(&self, project: &str) -> bool {
        self.presence_events.contains(project)
    }

    /// Loads every project's keys (JWK Sets from sources of their own, which start fetching);
    /// returns every problem found, each naming the key.
    pub fn load(projects: &[ProjectConfig], leeway_secs: u64) -> Result<Self, Vec<String>> {
        Self::load_with(projects, leeway_secs, &JwksSources::default())
    }

    /// Loads every project's keys, the JWK Sets from `jwks` (a source whose settings did not
    /// change is kept, keys and all); returns every problem found, each naming the key.
    pub fn load_with(
        projects: &[ProjectConfig],
        leeway_secs: u64,
        jwks: &JwksSources,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut map = HashMap::new();
        let mut by_certificate = HashMap::new();
        let history = projects
            .iter()
            .filter_map(|p| Some((p.id.clone(), p.history.clone()?)))
            .collect();
        let deflate = projects
            .iter()
            .filter(|p| p.permessage_deflate)
            .map(|p| p.id.clone())
            .collect();
        for (i, p) in projects.iter().enumerate() {
            let mut keys = Vec::new();
            for (j, k) in p.keys.iter().enumerate() {
                let at = format!("projects[{i}] ({}).keys[{j}]", p.id);
                let pem = match (&k.public_key_file, &k.public_key_pem) {
                    (Some(f), _) => match std::fs::read(f) {
                        Ok(b) => Some(b),
                        Err(e) => {
                            problems.push(format!(
                                "{at}.public_key_file: cannot read {}: {e}",
                                f.display()
                            ));
                            continue;
                        }
                    },
                    (None, Some(s)) => Some(s.as_bytes().to_vec()),
                    (None, None) => None,
                };
                let key = match (k.alg, &k.secret, pem) {
                    (KeyAlgorithm::HS256, Some(secret), _) => {
                        Ok(DecodingKey::from_secret(secret.as_bytes()))
                    }
                    (KeyAlgorithm::RS256, _, Some(pem)) => DecodingKey::from_rsa_pem(&pem),
                    (KeyAlgorithm::ES256, _, Some(pem)) => DecodingKey::from_ec_pem(&pem),
                    (KeyAlgorithm::EdDSA, _, Some(pem)) => DecodingKey::from_ed_pem(&pem),
                    _ => {
                        problems.push(format!("{at}: no key material for {:?}", k.alg));
                        continue;
                    }
                };
                let key = match key {
                    Ok(key) => key,
                    Err(e) => {
                        problems.push(format!("{at}: not a {:?} public key in PEM: {e}", k.alg));
                        continue;
                    }
                };
                let mut validation = Validation::new(algorithm(k.alg));
                validation.set_audience(&[&p.id]);
                validation.set_required_spec_claims(&["exp", "sub", "aud"]);
                validation.leeway = leeway_secs;
                keys.push(LoadedKey {
                    kid: k.kid.clone(),
                    key,
                    validation,
                });
            }
            let source = match &p.jwks {
                Some(cfg) => match jwks.get(&p.id, cfg, leeway_secs) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        problems.push(format!("projects[{i}] ({}).jwks.{e}", p.id));
                        None
                    }
                },
                None => None,
            };
            map.insert(p.id.clone(), ProjectKeys { keys, jwks: source });
            if let Some(c) = &p.client_certificates {
                let mut groups = Vec::new();
                for (j, g) in c.groups.iter().enumerate() {
                    match GroupId::new(g) {
                        Ok(g) => groups.push(g),
                        Err(e) => problems.push(format!(
                            "projects[{i}] ({}).client_certificates.groups[{j}]: {e}",
                            p.id
                        )),
                    }
                }
                by_certificate.insert(p.id.clone(), (groups, c.channels.clone()));
            }
        }
        if problems.is_empty() {
            Ok(Self {
                projects: map,
                bans: BanList::default(),
                by_certificate,
                history,
                deflate,
                presence_events: projects
                    .iter()
                    .filter(|p| p.presence_events)
                    .map(|p| p.id.clone())
                    .collect(),
                webhooks: projects
                    .iter()
                    .filter_map(|p| Some((p.id.clone(), p.webhook.clone()?)))
                    .collect(),
            })
        } else {
            Err(problems)
        }
    }

    /// These keys with `bans` in force.
    pub fn with_bans(mut self, bans: BanList) -> Self {
        self.bans = bans;
        self
    }

    /// The banned users.
    pub fn bans(&self) -> &BanList {
        &self.bans
    }

    /// Refuses a banned user of `project`.
    fn check_ban(&self, project: &str, user: &UserId) -> Result<(), AuthError> {
        if self
            .bans
            .is_banned(project, user.as_str(), herald_core::bans::now_ms())
        {
            return Err(AuthError::Banned);
        }
        Ok(())
    }

    /// The JWK Set source of `project`, if it has one.
    pub fn jwks(&self, project: &str) -> Option<Arc<JwksSource>> {
        self.projects.get(project)?.jwks.clone()
    }

    /// Whether the project exists.
    pub fn has_project(&self, project: &str) -> bool {
        self.projects.contains_key(project)
    }

    /// Whether `project` accepts clients by TLS client certificate without a token.
    pub fn accepts_certificates(&self, project: &str) -> bool {
        self.by_certificate.contains_key(project)
    }

    /// The identity of a client authenticated by its verified TLS certificate: `sub` is the
    /// certificate's name ([`crate::tls::ClientCert::name`]), the connection expires with it.
    pub fn verify_certificate(
        &self,
        project: &str,
        cert: &crate::tls::ClientCert,
    ) -> Result<Identity, AuthError> {
        let (groups, channels) = self.by_certificate.get(project).ok_or(AuthError::Missing)?;
        let user = UserId::new(&cert.name)
            .map_err(|e| AuthError::BadClaims(format!("certificate name: {e}")))?;
        self.check_ban(project, &user)?;
        Ok(Identity {
            user,
            groups: groups.clone(),
            channels: channels.clone(),
            expires_unix: cert.not_after_unix,
        })
    }

    /// Verifies a client token for `project`.
    pub fn verify(&self, project: &str, token: &str) -> Result<Identity, AuthError> {
        let keys = self
            .projects
            .get(project)
            .ok_or(AuthError::UnknownProject)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let fetched = keys.jwks.as_ref().map(|s| s.keys());
        let fetched = fetched.as_ref().map_or(&[][..], |k| &k[..]);
        // Configured keys first, then the JWK Set's; without a kid, the one key there is.
        let (key, validation) = match &header.kid {
            Some(kid) => keys
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| (&k.key, &k.validation))
                .or_else(|| {
                    fetched
                        .iter()
                        .find(|k| k.kid.as_deref() == Some(kid))
                        .map(|k| (&k.key, &k.validation))
                }),
            None => match (keys.keys.as_slice(), fetched) {
                ([k], []) => Some((&k.key, &k.validation)),
                ([], [k]) => Some((&k.key, &k.validation)),
                _ => None,
            },
        }
        .ok_or(AuthError::UnknownKid)?;
        let data =
            jsonwebtoken::decode::<RawClaims>(token, key, validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        AuthError::BadSignature
                    }
                    ErrorKind::MissingRequiredClaim(c) => {
                        AuthError::BadClaims(format!("missing claim {c}"))
                    }
                    ErrorKind::Json(_) => AuthError::BadClaims("claims of the wrong type".into()),
                    _ => AuthError::Malformed,
                }
            })?;
        let c = data.claims;
        let user = UserId::new(&c.sub).map_err(|e| AuthError::BadClaims(format!("sub: {e}")))?;
        self.check_ban(project, &user)?;
        let groups = c
            .groups
            .iter()
            .map(|g| GroupId::new(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AuthError::BadClaims(format!("groups: {e}")))?;
        Ok(Identity {
            user,
            groups,
            channels: c.channels,
            expires_unix: c.exp,
        })
    }
}

/// Verifies a client token for `project` with the keys in force. When its `kid` is unknown and
/// the project has a JWK Set, the set is fetched again (at most once per its `min_refresh_secs`)
/// and waited for at most its fetch deadline, then the token is verified once more.
pub async fn verify_refreshing(
    keys: &arc_swap::ArcSwap<AuthKeys>,
    project: &str,
    token: &str,
) -> Result<Identity, AuthError> {
    let (result, source) = {
        let k = keys.load();
        let result = k.verify(project, token);
        let source = match result {
            Err(AuthError::UnknownKid) => k.jwks(project),
            _ => None,
        };
        (result, source)
    };
    match source {
        Some(source) if source.refresh_for_unknown_kid().await => {
            keys.load().verify(project, token)
        }
        _ => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::projects::KeyConfig;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn keys() -> AuthKeys {
        let p = ProjectConfig {
            id: "demo".into(),
            api_keys: vec![],
            limits: Default::default(),
            keys: vec![KeyConfig {
                kid: None,
                alg: KeyAlgorithm::HS256,
                secret: Some(SECRET.into()),
                public_key_file: None,
                public_key_pem: None,
            }],
            client_certificates: None,
            history: None,
            permessage_deflate: false,
            jwks: None,
            presence_events: false,
            webhook: None,
        };
        AuthKeys::load(&[p], 0).expect("keys load")
    }

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
    }

    fn exp() -> u64 {
        jsonwebtoken::get_current_timestamp() + 600
    }

    #[test]
    fn verifies_audience_and_claims() {
        let k = keys();
        let id = k
            .verify(
                "demo",
                &token(serde_json::json!({"sub":"u1","aud":"demo","exp":exp(),"groups":["g"],"channels":["news-*"]})),
            )
            .expect("valid");
        assert_eq!(id.user.as_str(), "u1");
        assert!(id.may_subscribe("news-x"));
        assert!(!id.may_subscribe("sport"));
        let other = token(serde_json::json!({"sub":"u1","aud":"other","exp":exp()}));
        assert_eq!(
            k.verify("demo", &other).err(),
            Some(AuthError::WrongAudience)
        );
        let bad_sub = token(serde_json::json!({"sub":"a.*","aud":"demo","exp":exp()}));
        assert!(matches!(
            k.verify("demo", &bad_sub),
            Err(AuthError::BadClaims(_))
        ));
        assert_eq!(k.verify("demo", "x.y.z").err(), Some(AuthError::Malformed));
        assert_eq!(k.verify("nope", "x").err(), Some(AuthError::UnknownProject));
    }
}
