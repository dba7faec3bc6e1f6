//! The PostgreSQL engine: one queue for runners on several hosts. Connecting (URL, password,
//! TLS, timeouts), its own migrations under `sql/postgres/` with a version table, and the
//! queue's SQL (see [`queue`]); the reads of `report` and `export` (see [`report`], [`latency`],
//! [`grades`], [`export`]). Times are the database's clock (`llmbatch_now_ms()`).

pub mod catalog;
pub mod export;
pub mod finish;
pub mod grades;
pub mod latency;
pub mod queue;
pub mod report;
pub mod session;
pub mod store;
mod tls;

use anyhow::{Context, Result};
use postgres::config::SslMode;
use postgres::{Client, Config};
use std::time::Duration;

use crate::error::UsageError;

/// Migrations in order. Never remove or edit an entry once shipped: add a new file.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "001_init",
        include_str!("../../../sql/postgres/001_init.sql"),
    ),
    (
        "002_streaming",
        include_str!("../../../sql/postgres/002_streaming.sql"),
    ),
    (
        "003_item_messages",
        include_str!("../../../sql/postgres/003_item_messages.sql"),
    ),
    (
        "004_sweeps",
        include_str!("../../../sql/postgres/004_sweeps.sql"),
    ),
    (
        "005_claim_index",
        include_str!("../../../sql/postgres/005_claim_index.sql"),
    ),
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Whether `--db` names a PostgreSQL database rather than an SQLite file.
pub fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// The URL with its password (user-info or `password=`) replaced by `***`: the only form of
/// it that may appear in a message or a log.
pub fn redact(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, host) = match rest.rsplit_once('@') {
                Some((a, h)) => (Some(a), h),
                None => (None, rest),
            };
            let auth = auth.map(|a| match a.split_once(':') {
                Some((user, _)) => format!("{user}:***@"),
                None => format!("{a}@"),
            });
            format!("{scheme}://{}{host}", auth.unwrap_or_default())
        }
        None => head.to_string(),
    };
    if let Some(q) = query {
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k == "password" => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&parts.join("&"));
    }
    out
}

/// A parsed `--db` URL: the driver's configuration and how TLS is to be done.
#[derive(Clone)]
pub struct Target {
    config: Config,
    check: tls::Check,
    root_file: Option<String>,
    /// The URL without its password, for messages.
    pub shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let shown = redact(url);
        // `verify-ca` / `verify-full` and `sslrootcert` are libpq's; the driver knows only
        // disable / prefer / require, so they are taken out here and done by our TLS set-up.
        let (head, query) = match url.split_once('?') {
            Some((h, q)) => (h, q),
            None => (url, ""),
        };
        let mut mode = "prefer".to_string();
        let mut root_file = None;
        let mut rest = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("sslmode", v)) => mode = v.to_string(),
                Some(("sslrootcert", v)) => root_file = Some(v.to_string()),
                _ => rest.push(kv),
            }
        }
        let (ssl, check) = match mode.as_str() {
            "disable" => (SslMode::Disable, tls::Check::None),
            "allow" | "prefer" => (SslMode::Prefer, tls::Check::None),
            // As libpq: `require` with a root certificate file checks the chain.
            "require" if root_file.is_some() => (SslMode::Require, tls::Check::Chain),
            "require" => (SslMode::Require, tls::Check::None),
            "verify-ca" => (SslMode::Require, tls::Check::Chain),
            "verify-full" => (SslMode::Require, tls::Check::Full),
            other => crate::usage!(
                "--db {shown}: unknown sslmode {other:?} (disable, allow, prefer, require, verify-ca, verify-full)"
            ),
        };
        let plain = if rest.is_empty() {
            head.to_string()
        } else {
            format!("{head}?{}", rest.join("&"))
        };
        let mut config: Config = plain
            .parse()
            .map_err(|e| UsageError(format!("--db {shown}: not a PostgreSQL URL: {e}")))?;
        config.ssl_mode(ssl);
        if config.get_dbname().is_none() {
            crate::usage!(
                "--db {shown}: the URL names no database (postgres://user@host:port/DBNAME)"
            );
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // A server that vanished is noticed in seconds, not after the kernel's two hours.
        config.keepalives_idle(Duration::from_secs(10));
        config.tcp_user_timeout(Duration::from_secs(30));
        config.application_name("llmbatch");
        if config.get_password().is_none() {
            if let Some(pw) = std::env::var_os("PGPASSWORD") {
                config.password(pw.as_encoded_bytes());
            } else if let Some(pw) = pgpass(&config) {
                config.password(pw);
            }
        }
        Ok(Target {
            config,
            check,
            root_file,
            shown,
        })
    }

    /// A new connection with the session's time limits set. Errors name the URL without its
    /// password.
    pub fn connect(&self) -> Result<Client> {
        let tls = tls::connector(self.check, self.root_file.as_deref())?;
        let mut client = self
            .config
            .connect(tls)
            .map_err(|e| anyhow::anyhow!("{}", clean(&e, &self.shown)))
            .with_context(|| format!("cannot connect to {}", self.shown))?;
        // No statement waits forever on a lock, and no transaction left open by a stuck
        // process pins the server: both are bounded on the server itself.
        let lock_ms = crate::db::busy_timeout().as_millis();
        client
            .batch_execute(&format!(
                "SET statement_timeout = '{}ms'; SET lock_timeout = '{lock_ms}ms';
                 SET idle_in_transaction_session_timeout = '60s'; SET TIME ZONE 'UTC'",
                lock_ms.max(300_000)
            ))
            .with_context(|| format!("cannot configure the session on {}", self.shown))?;
        Ok(client)
    }
}

/// A driver error as text, with the password never in it.
pub fn clean(e: &postgres::Error, shown: &str) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    };
    format!("{text} ({shown})")
}

/// The password for this connection from `~/.pgpass` (or `PGPASSFILE`), as libpq finds it:
/// the first line `host:port:database:user:password` that matches, `*` matching anything. The
/// file is ignored unless only its owner can read it.
fn pgpass(config: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = match std::env::var_os("PGPASSFILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
    };
    let meta = std::fs::metadata(&path).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        log::warn!(
            "{} is readable by others: ignored (chmod 0600 it)",
            path.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let db = config.get_dbname().unwrap_or_default();
    let user = config.get_user().unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(pgpass_fields)
        .find(|f| {
            f.len() == 5
                && [&host, &port, db, user]
                    .iter()
                    .zip(&f[..4])
                    .all(|(want, got)| got == "*" || got == *want)
        })
        .map(|f| f[4].clone())
}

/// The fields of a `.pgpass` line: `:` separates, `\` escapes `:` and `\`.
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().unwrap().push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// Opens a PostgreSQL database for a command: connected, its tables made or upgraded
/// (`create`), or refused when it has none.
pub fn open(url: &str, create: bool) -> Result<store::PgStore> {
    let target = Target::parse(url)?;
    let mut client = target.connect()?;
    migrate(&mut client, &target.shown, create)?;
    Ok(store::PgStore::new(target, client))
}

/// Creates or upgrades llmbatch's tables in the database, under a lock so two hosts starting
/// at once migrate once. `create` false: a database without our tables is refused (a read or
/// a run on the wrong database must not create an empty queue in it).
pub fn migrate(client: &mut Client, shown: &str, create: bool) -> Result<()> {
    let version = schema_version(client)?;
    if version > SCHEMA_VERSION {
        crate::usage!(
            "database {shown} has llmbatch schema version {version}, newer than this llmbatch understands ({SCHEMA_VERSION}); upgrade llmbatch"
        );
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version == 0 && !create {
        crate::usage!(
            "database {shown} has no llmbatch tables — create them with `llmbatch enqueue` (or `llmbatch models set`), or point --db / LLMBATCH_DB at the right database"
        );
    }
    let mut tx = client.transaction()?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('llmbatch schema'));
         CREATE TABLE IF NOT EXISTS llmbatch_schema (version BIGINT NOT NULL);",
    )?;
    let version: i64 = tx
        .query_opt("SELECT version FROM llmbatch_schema", &[])?
        .map(|r| r.get(0))
        .unwrap_or(0);
    for (name, sql) in &MIGRATIONS[version.min(SCHEMA_VERSION) as usize..] {
        tx.batch_execute(sql)
            .map_err(|e| anyhow::anyhow!("{}", clean(&e, shown)))
            .with_context(|| format!("migration postgres/{name} failed"))?;
    }
    tx.execute("DELETE FROM llmbatch_schema", &[])?;
    tx.execute(
        "INSERT INTO llmbatch_schema (version) VALUES ($1)",
        &[&SCHEMA_VERSION],
    )?;
    tx.commit()
        .with_context(|| format!("cannot migrate database {shown}"))?;
    Ok(())
}

fn schema_version(client: &mut Client) -> Result<i64> {
    let exists: bool = client
        .query_one("SELECT to_regclass('llmbatch_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_opt("SELECT version FROM llmbatch_schema", &[])?
        .map(|r| r.get(0))
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://lab:s3cret@db.example:5432/queue?sslmode=require&password=x"),
            "postgres://lab:***@db.example:5432/queue?sslmode=require&password=***"
        );
        assert_eq!(
            redact("postgresql://lab@db/queue"),
            "postgresql://lab@db/queue"
        );
        assert_eq!(redact("postgres://a:b:c@h/d"), "postgres://a:***@h/d");
    }

    #[test]
    fn pgpass_lines_split_on_unescaped_colons() {
        assert_eq!(
            pgpass_fields(r"db\:1:*:queue:lab:pa\:ss:word"),
            vec!["db:1", "*", "queue", "lab", "pa:ss:word"]
        );
    }

    #[test]
    fn sslmodes_follow_libpq() {
        let t = Target::parse("postgres://u@h/d?sslmode=verify-full").unwrap();
        assert_eq!(t.check, tls::Check::Full);
        let t = Target::parse("postgres://u@h/d?sslmode=disable").unwrap();
        assert_eq!(t.check, tls::Check::None);
        let err = Target::parse("postgres://u:pw@h/d?sslmode=sometimes").unwrap_err();
        assert!(format!("{err:#}").contains("unknown sslmode \"sometimes\""));
        assert!(!format!("{err:#}").contains("pw"));
        let err = Target::parse("postgres://u:pw@h").unwrap_err();
        assert!(format!("{err:#}").contains("names no database"), "{err:#}");
    }
}

#[cfg(test)]
mod tests_server;

/// Whether an error means the server could not be reached or the connection was lost: the
/// work may be retried on a new connection (a runner rides out a restart).
pub fn is_disconnect(err: &anyhow::Error) -> bool {
    session::is_disconnect(err)
}
