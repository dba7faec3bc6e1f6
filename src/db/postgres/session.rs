//! A connection that comes back: after PostgreSQL restarts (or the network drops) the next
//! use reconnects, with a growing pause between tries, so a runner rides out a restart. What
//! was lost in between is safe: every finish is fenced by its lease token.

use anyhow::Result;
use postgres::Client;
use std::time::{Duration, Instant};

use super::Target;

pub struct Session {
    pub target: Target,
    client: Option<Client>,
    /// When the next reconnection may be tried, and how long the pause after it will be.
    retry_at: Option<Instant>,
    pause: Duration,
    /// Prepared on the current connection; emptied with it.
    statements: Statements,
}

const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(5);

impl Session {
    /// Connects now: a first connection that fails is an error, not a retry.
    pub fn open(target: Target) -> Result<Session> {
        let client = target.connect()?;
        Ok(Session::with_client(target, client))
    }

    pub fn with_client(target: Target, client: Client) -> Session {
        Session {
            target,
            client: Some(client),
            retry_at: None,
            pause: FIRST_PAUSE,
            statements: Statements::default(),
        }
    }

    /// The connection, reconnecting first if it was lost (and the pause has passed).
    pub fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            if let Some(at) = self.retry_at {
                let now = Instant::now();
                if now < at {
                    return Err(Disconnected(format!(
                        "{} is unreachable; next try in {:.1}s",
                        self.target.shown,
                        (at - now).as_secs_f64()
                    ))
                    .into());
                }
            }
            match self.target.connect() {
                Ok(c) => {
                    if self.retry_at.is_some() {
                        log::warn!("reconnected to {}", self.target.shown);
                    }
                    self.client = Some(c);
                    self.statements = Statements::default();
                    self.retry_at = None;
                    self.pause = FIRST_PAUSE;
                }
                Err(e) => {
                    self.retry_at = Some(Instant::now() + self.pause);
                    self.pause = (self.pause * 2).min(MAX_PAUSE);
                    return Err(Disconnected(format!("{e:#}")).into());
                }
            }
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    /// Runs `f` on the connection; a connection lost meanwhile is dropped, so the next call
    /// reconnects.
    pub fn with<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        self.with_cache(|c, _| f(c))
    }

    /// As [`Session::with`], with this connection's prepared statements.
    pub fn with_cache<T>(
        &mut self,
        f: impl FnOnce(&mut Client, &mut Statements) -> Result<T>,
    ) -> Result<T> {
        self.client()?;
        let client = self.client.as_mut().expect("connected");
        let result = f(client, &mut self.statements);
        if result.is_err() && self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
            self.retry_at = Some(Instant::now() + self.pause);
        }
        result
    }
}

/// Statements prepared once per connection: the hot path (claim, finish, heartbeat) then
/// costs one round trip per statement instead of two.
#[derive(Default)]
pub struct Statements(std::collections::HashMap<String, postgres::Statement>);

impl Statements {
    pub fn get(
        &mut self,
        c: &mut impl postgres::GenericClient,
        sql: &str,
    ) -> Result<postgres::Statement> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        let s = c.prepare(sql)?;
        self.0.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

/// Whether an error means the server could not be reached or the connection was lost (the
/// work may be retried on a new connection), rather than a failed statement.
pub fn is_disconnect(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        if let Some(pe) = e.downcast_ref::<postgres::Error>() {
            return pe.is_closed()
                || pe.as_db_error().is_some_and(|d| {
                    // admin_shutdown, crash_shutdown, cannot_connect_now
                    matches!(d.code().code(), "57P01" | "57P02" | "57P03")
                })
                || std::error::Error::source(pe)
                    .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
        }
        e.downcast_ref::<Disconnected>().is_some()
    })
}

/// The server could not be reached.
#[derive(Debug)]
pub struct Disconnected(pub String);

impl std::fmt::Display for Disconnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Disconnected {}
