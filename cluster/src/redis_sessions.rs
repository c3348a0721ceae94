//! Sessions in the history's Redis ([`Sessions`] for [`RedisHistory`]): one hash per session,
//! `<prefix>:s:<project>:<session id>`, beside the streams its positions point into, so what
//! clears only the registry never touches them. Fields: `s` the subscriptions (`<qos> <topic>`
//! lines), `p:b`, `p:g:<group>`, `p:u:<user>` the acknowledged positions (`<epoch>:<offset>`).
//! One key per session: every call is one command or one script on one slot (a single Redis or
//! a Redis Cluster alike), one round trip.

use std::time::Duration;

use async_trait::async_trait;
use herald_core::history::{HistoryError, Position, StreamTarget};
use herald_core::ids::{GroupId, UserId};
use herald_core::sessions::{SessionKey, SessionRecord, Sessions};
use redis::{Script, Value};

use crate::redis_history::RedisHistory;

/// Ack: moves one position forward (another epoch replaces it), creating the record.
/// KEYS: the session. ARGV: field, epoch, offset, ttl ms. Returns 1 when it moved.
const ACK: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local moved = 1
if cur then
  local e, o = string.match(cur, '^(%d+):(%d+)$')
  if e == ARGV[2] and tonumber(o) >= tonumber(ARGV[3]) then moved = 0 end
end
if moved == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return moved
";

/// Save: replaces the whole record. KEYS: the session. ARGV: ttl ms, then field, value pairs.
const SAVE: &str = r"
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
";

/// The hash field of a stream's position.
fn field(stream: &StreamTarget) -> String {
    match stream {
        StreamTarget::Broadcast => "p:b".into(),
        StreamTarget::Group(g) => format!("p:g:{g}"),
        StreamTarget::User(u) => format!("p:u:{u}"),
    }
}

/// The stream of a position field.
fn stream_of(field: &str) -> Option<StreamTarget> {
    let rest = field.strip_prefix("p:")?;
    if rest == "b" {
        return Some(StreamTarget::Broadcast);
    }
    if let Some(g) = rest.strip_prefix("g:") {
        return GroupId::new(g).ok().map(StreamTarget::Group);
    }
    UserId::new(rest.strip_prefix("u:")?)
        .ok()
        .map(StreamTarget::User)
}

fn position(v: &str) -> Option<Position> {
    let (e, o) = v.split_once(':')?;
    Some(Position {
        epoch: e.parse().ok()?,
        offset: o.parse().ok()?,
    })
}

/// A record from `HGETALL`'s field/value pairs; fields it cannot read are left out.
fn record(pairs: Vec<(String, String)>) -> SessionRecord {
    let mut r = SessionRecord::default();
    for (f, v) in pairs {
        if f == "s" {
            r.subscriptions = v
                .lines()
                .filter_map(|l| {
                    let (q, t) = l.split_once(' ')?;
                    Some((t.to_owned(), q.parse().ok()?))
                })
                .collect();
        } else if let (Some(s), Some(p)) = (stream_of(&f), position(&v)) {
            r.positions.push((s, p));
        }
    }
    // Fields come in no set order: a stable one for readers and tests.
    r.positions.sort_by_key(|(s, _)| field(s));
    r
}

fn ttl_ms(ttl: Duration) -> String {
    ttl.as_millis().max(1).to_string()
}

#[async_trait]
impl Sessions for RedisHistory {
    async fn load(&self, key: &SessionKey) -> Result<Option<SessionRecord>, HistoryError> {
        let k = self.session_key(key);
        let mut c = redis::cmd("HGETALL");
        c.arg(&k);
        let v = self.command(c).await?;
        let Value::Array(items) = v else {
            if let Value::Map(m) = v {
                let pairs = m
                    .into_iter()
                    .filter_map(|(f, v)| Some((text(f)?, text(v)?)))
                    .collect::<Vec<_>>();
                return Ok((!pairs.is_empty()).then(|| record(pairs)));
            }
            return Ok(None);
        };
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(f), Some(v)) = (it.next(), it.next()) {
            if let (Some(f), Some(v)) = (text(f), text(v)) {
                pairs.push((f, v));
            }
        }
        Ok((!pairs.is_empty()).then(|| record(pairs)))
    }

    async fn save(
        &self,
        key: &SessionKey,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<(), HistoryError> {
        let k = self.session_key(key);
        let mut args = vec![ttl_ms(ttl)];
        let subs: String = record
            .subscriptions
            .iter()
            .map(|(t, q)| format!("{q} {t}\n"))
            .collect();
        args.push("s".into());
        args.push(subs);
        for (s, p) in &record.positions {
            args.push(field(s));
            args.push(format!("{}:{}", p.epoch, p.offset));
        }
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.run_script(&SAVE_SCRIPT, SAVE, &[&k], &args).await?;
        Ok(())
    }

    async fn ack(
        &self,
        key: &SessionKey,
        stream: &StreamTarget,
        at: Position,
        ttl: Duration,
    ) -> Result<(), HistoryError> {
        let k = self.session_key(key);
        let (f, e, o, t) = (
            field(stream),
            at.epoch.to_string(),
            at.offset.to_string(),
            ttl_ms(ttl),
        );
        self.run_script(
            &ACK_SCRIPT,
            ACK,
            &[&k],
            &[f.as_bytes(), e.as_bytes(), o.as_bytes(), t.as_bytes()],
        )
        .await?;
        Ok(())
    }

    async fn touch(&self, key: &SessionKey, ttl: Duration) -> Result<(), HistoryError> {
        let mut c = redis::cmd("PEXPIRE");
        c.arg(self.session_key(key)).arg(ttl_ms(ttl));
        self.command(c).await?;
        Ok(())
    }

    async fn remove(&self, key: &SessionKey) -> Result<(), HistoryError> {
        let mut c = redis::cmd("DEL");
        c.arg(self.session_key(key));
        self.command(c).await?;
        Ok(())
    }
}

static ACK_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(ACK));
static SAVE_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(SAVE));

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_values_read_back() {
        let g = StreamTarget::Group(GroupId::new("chat/a").expect("group"));
        let u = StreamTarget::User(UserId::new("g").expect("user"));
        for s in [StreamTarget::Broadcast, g, u] {
            assert_eq!(stream_of(&field(&s)), Some(s));
        }
        let r = record(vec![
            ("s".into(), "1 news\n0 user/a\n".into()),
            ("p:b".into(), "7:3".into()),
            ("p:x".into(), "bad".into()),
        ]);
        assert_eq!(
            r.subscriptions,
            vec![("news".into(), 1), ("user/a".into(), 0)]
        );
        assert_eq!(
            r.positions,
            vec![(
                StreamTarget::Broadcast,
                Position {
                    epoch: 7,
                    offset: 3
                }
            )]
        );
    }
}
