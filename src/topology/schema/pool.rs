//! The `[pool]` table: pool-wide state on Redis (bans shared by every member). Without it
//! every member enforces alone, in-process.

use std::path::Path;
use std::time::Duration;

use super::interfaces::read_password;
use crate::topology::model::PoolConfig;
use crate::topology::reader::{Doc, Section};
use crate::topology::StateEnv;

pub(super) const POOL_KEYS: &[&str] = &[
    "redis",
    "key_prefix",
    "username",
    "password_env",
    "password_file",
    "timeout",
];

/// `Some(None)` without a `[pool]` table; `None` on a problem.
pub(super) fn read_pool(
    doc: &mut Doc<'_>,
    root: Section<'_, '_>,
    base: &Path,
    env: &StateEnv,
) -> Option<Option<PoolConfig>> {
    let s = doc.table(root, "pool", POOL_KEYS, false);
    if !s.present() {
        return Some(None);
    }
    let (redis, line) = doc.string(s, "redis", true)?;
    // The credentials come from the environment or a file, never from the topology (they
    // get copied into tickets and repositories).
    let has_userinfo = redis
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .is_some_and(|authority| authority.contains('@'));
    if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) {
        doc.problem(
            line,
            s.key("redis"),
            "expected redis://host:port[/db] or rediss://host:port[/db] (TLS)",
        );
        return None;
    }
    if has_userinfo {
        doc.problem(
            line,
            s.key("redis"),
            "no user or password in the URL: use username and password_env or password_file",
        );
        return None;
    }
    let key_prefix = doc
        .string(s, "key_prefix", false)
        .map_or_else(|| "sipedge".to_string(), |(p, _)| p);
    if key_prefix.is_empty() || !key_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        let line = doc.line_of_key(s, "key_prefix");
        doc.problem(line, s.key("key_prefix"), "printable ASCII without spaces");
        return None;
    }
    let username = doc.string(s, "username", false).map(|(u, _)| u);
    let password = if s.has("password_env") || s.has("password_file") {
        Some(read_password(doc, s, base, env)?)
    } else {
        None
    };
    let timeout = doc.duration(
        s,
        "timeout",
        (Duration::from_millis(10), Duration::from_secs(30)),
        Duration::from_millis(500),
    );
    Some(Some(PoolConfig {
        redis,
        key_prefix,
        username,
        password,
        timeout,
    }))
}
