//! Mailbox leases on PostgreSQL (DESIGN §5.2): the SQL of the lease protocol, and the fences
//! that every write of a leased mailbox passes.
//!
//! A lease is a row of `leases`: which agent works the mailbox, until when (the database's
//! clock), and its `epoch`, bumped at every grant. The agent's [`crate::lease`] manager
//! grants, renews and releases through [`Leases`]; while it holds a mailbox, the store's
//! [`Fences`] know the epoch, and [`PgStore::fenced`] makes a mailbox's write transaction
//! begin with `SELECT … FOR SHARE` of the lease row at that epoch. The row lock orders the
//! commit against a grant: a grant waits for a commit in flight, and a commit after a grant
//! finds the epoch moved and rolls back. So an agent that was paused (SIGSTOP, a frozen VM)
//! past its lease can never write after another agent was granted the mailbox.

use super::{PgError, PgStore, PgTx};
use crate::store::blocking;
use std::collections::HashMap;
use std::sync::Mutex;

type Result<T> = std::result::Result<T, PgError>;
type LResult<T> = std::result::Result<T, crate::store::StoreError>;

/// The epochs of the leases this process holds. Off (every write allowed) until an agent
/// turns it on: commands and `sync` write without leases, as on sled.
#[derive(Debug, Default)]
pub(crate) struct Fences {
    inner: Mutex<Option<Held>>,
}

#[derive(Debug)]
struct Held {
    agent: String,
    /// Per mailbox the epoch of its last grant, and whether the lease is still held. A lost
    /// lease keeps its epoch: a batch still in hand is then refused by the database's own
    /// check (the epoch moved), or committed if nobody was granted the mailbox meanwhile.
    epochs: HashMap<String, (i64, bool)>,
}

/// What a fenced transaction checks: the lease row of `mailbox` still names `agent` at `epoch`.
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    pub mailbox: String,
    pub agent: String,
    pub epoch: i64,
}

impl Fences {
    /// From now on a mailbox's writes need its lease (`run` on PostgreSQL).
    pub(crate) fn enable(&self, agent: &str) {
        *self.lock() = Some(Held {
            agent: agent.to_string(),
            epochs: HashMap::new(),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease of `mailbox` was granted to this agent at `epoch`.
    pub(crate) fn hold(&self, mailbox: &str, epoch: i64) {
        if let Some(h) = self.lock().as_mut() {
            h.epochs.insert(mailbox.to_string(), (epoch, true));
        }
    }

    /// The lease of `mailbox` was handed back: its writes are refused from now on.
    pub(crate) fn drop_lease(&self, mailbox: &str) {
        if let Some(h) = self.lock().as_mut() {
            h.epochs.remove(mailbox);
        }
    }

    /// The lease of `mailbox` may have lapsed or gone to another agent: this agent stops
    /// working it, and a write still under way is left to the database's epoch check.
    pub(crate) fn lapse(&self, mailbox: &str) {
        if let Some(h) = self.lock().as_mut() {
            if let Some(e) = h.epochs.get_mut(mailbox) {
                e.1 = false;
            }
        }
    }

    /// Whether this process works with leases (an agent on PostgreSQL).
    pub(crate) fn enabled(&self) -> bool {
        self.lock().is_some()
    }

    /// Whether this process may work `mailbox` (always, with fencing off).
    pub(crate) fn holds(&self, mailbox: &str) -> bool {
        self.lock()
            .as_ref()
            .is_none_or(|h| h.epochs.get(mailbox).is_some_and(|e| e.1))
    }

    /// The check a write of `mailbox` must pass: `None` with fencing off; an error when this
    /// agent does not hold the mailbox at all.
    pub(crate) fn fence(&self, mailbox: &str) -> Result<Option<Fence>> {
        let g = self.lock();
        let Some(h) = g.as_ref() else {
            return Ok(None);
        };
        match h.epochs.get(mailbox) {
            Some(&(epoch, _)) => Ok(Some(Fence {
                mailbox: mailbox.to_string(),
                agent: h.agent.clone(),
                epoch,
            })),
            None => Err(PgError::Fenced {
                mailbox: mailbox.to_string(),
                epoch: None,
            }),
        }
    }
}

impl PgTx<'_> {
    /// The first statement of a fenced transaction: the lease row at the fence's epoch, locked
    /// against a grant until this transaction ends.
    pub(super) fn check_fence(&self, f: &Fence) -> Result<()> {
        let held = self.db(|c| {
            Ok(c.query_opt(
                "SELECT 1 FROM leases WHERE mailbox = $1 AND agent = $2 AND epoch = $3 FOR SHARE",
                &[&f.mailbox, &f.agent, &f.epoch],
            )?)
        })?;
        match held {
            Some(_) => Ok(()),
            None => Err(PgError::Fenced {
                mailbox: f.mailbox.clone(),
                epoch: Some(f.epoch),
            }),
        }
    }
}

impl PgStore {
    /// Runs `f` in a transaction that first checks this agent's lease of `mailbox` (see the
    /// module doc); without fencing, a plain transaction.
    pub(super) fn fenced<T>(&self, mailbox: &str, f: impl Fn(&PgTx<'_>) -> Result<T>) -> Result<T> {
        use crate::track::tx::Engine;
        let fence = self.fences.fence(mailbox)?;
        Engine::transaction(self, |tx| {
            if let Some(fence) = &fence {
                tx.check_fence(fence)?;
            }
            f(tx)
        })
    }

    pub(crate) fn fences(&self) -> &Fences {
        &self.fences
    }
}

/// A lease as `status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct LeaseRow {
    pub mailbox: String,
    pub agent: Option<String>,
    pub epoch: i64,
    /// When it lapses unless renewed (RFC 3339, the database's clock).
    pub until: Option<String>,
    /// Whether it has lapsed (by the database's clock).
    #[serde(skip)]
    pub live: bool,
}

/// An agent as `status` and `agents` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct AgentRow {
    pub name: String,
    pub last_seen: String,
    /// Seen within the lease time to live.
    pub live: bool,
    /// How many mailboxes it holds now.
    pub mailboxes: i64,
}

/// A lease granted to this agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Grant {
    pub mailbox: String,
    pub epoch: i64,
    /// The agent whose lease lapsed (a take-over), if any.
    pub previous: Option<String>,
}

/// What the agents' table and a survey of the leases say, in one round trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Survey {
    /// Agents seen within the time to live (this one included).
    pub live_agents: i64,
    /// Of the agent's mailboxes, those free or lapsed.
    pub free: i64,
}

/// The lease table of a PostgreSQL store. Every method is one statement (or two), run through
/// [`blocking`]; `ttl` is in seconds.
#[derive(Clone, Copy)]
pub(crate) struct Leases<'a>(pub(crate) &'a PgStore);

const TTL: &str = "$ttl";

/// `sql` with `$ttl` replaced by the interval of parameter `n` (seconds, float8).
fn with_ttl(sql: &str, n: usize) -> String {
    sql.replace(TTL, &format!("(${n}::float8 * interval '1 second')"))
}

impl Leases<'_> {
    fn run<T: Send>(&self, f: impl FnOnce(&PgStore) -> Result<T> + Send) -> LResult<T> {
        let s = self.0;
        Ok(blocking(move || f(s))?)
    }

    /// Registers this agent, or finds another live process of the same name (`false`): one
    /// seen within `ttl` with another `instance`.
    pub(crate) fn register(&self, name: &str, instance: &str, ttl: f64) -> LResult<bool> {
        let sql = with_ttl(
            "INSERT INTO agents (name, instance, last_seen) VALUES ($1, $2, now())
             ON CONFLICT (name) DO UPDATE SET instance = excluded.instance,
                 last_seen = now(), started_at = now()
             WHERE agents.instance = excluded.instance OR agents.last_seen < now() - $ttl
             RETURNING 1",
            3,
        );
        self.run(|s| s.with(|c| Ok(c.query_opt(&sql, &[&name, &instance, &ttl])?.is_some())))
    }

    /// The mailboxes of this agent's configuration, each with a lease row (free if new).
    pub(crate) fn ensure(&self, mailboxes: &[String]) -> LResult<()> {
        self.run(|s| {
            s.with(|c| {
                c.execute(
                    "INSERT INTO leases (mailbox) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                    &[&mailboxes],
                )?;
                Ok(())
            })
        })
    }

    /// Renews `held` (mailbox, epoch) and this agent's `last_seen`: the mailboxes still held
    /// (the others were lost) with whether someone asked for them back, and whether the
    /// agent's row is still this instance's.
    pub(crate) fn renew(
        &self,
        name: &str,
        instance: &str,
        held: &[(String, i64)],
        ttl: f64,
    ) -> LResult<(Vec<(String, bool)>, bool)> {
        let (mb, ep): (Vec<&str>, Vec<i64>) = held.iter().map(|(m, e)| (m.as_str(), *e)).unzip();
        let sql = with_ttl(
            "UPDATE leases l SET until = now() + $ttl
             FROM unnest($2::text[], $3::bigint[]) AS h(mailbox, epoch)
             WHERE l.mailbox = h.mailbox AND l.epoch = h.epoch AND l.agent = $1
             RETURNING l.mailbox, l.release_requested",
            4,
        );
        self.run(|s| {
            s.with(|c| {
                let me = c.execute(
                    "UPDATE agents SET last_seen = now() WHERE name = $1 AND instance = $2",
                    &[&name, &instance],
                )? == 1;
                let rows = match held.is_empty() {
                    true => Vec::new(),
                    false => c.query(&sql, &[&name, &mb, &ep, &ttl])?,
                };
                Ok((rows.iter().map(|r| (r.get(0), r.get(1))).collect(), me))
            })
        })
    }

    /// How many agents are alive, and how many of `mailboxes` are free or lapsed.
    pub(crate) fn survey(&self, mailboxes: &[String], ttl: f64) -> LResult<Survey> {
        let sql = with_ttl(
            "SELECT (SELECT count(*) FROM agents WHERE last_seen > now() - $ttl),
                    (SELECT count(*) FROM leases WHERE mailbox = ANY($1)
                         AND (agent IS NULL OR until < now()))",
            2,
        );
        self.run(|s| {
            s.with(|c| {
                let r = c.query_one(&sql, &[&mailboxes, &ttl])?;
                Ok(Survey {
                    live_agents: r.get(0),
                    free: r.get(1),
                })
            })
        })
    }

    /// Grants this agent up to `n` of `mailboxes` that are free or lapsed, free ones first,
    /// none of `except`; each grant bumps the epoch.
    pub(crate) fn grant(
        &self,
        name: &str,
        mailboxes: &[String],
        except: &[String],
        n: i64,
        ttl: f64,
    ) -> LResult<Vec<Grant>> {
        let sql = with_ttl(
            "WITH pick AS (
                 SELECT mailbox, agent AS previous FROM leases
                 WHERE mailbox = ANY($2) AND NOT mailbox = ANY($3)
                     AND (agent IS NULL OR until < now())
                 ORDER BY agent IS NULL DESC, mailbox
                 LIMIT $4 FOR UPDATE SKIP LOCKED)
             UPDATE leases l SET agent = $1, epoch = l.epoch + 1, until = now() + $ttl,
                 granted_at = now(), release_requested = false
             FROM pick WHERE l.mailbox = pick.mailbox
             RETURNING l.mailbox, l.epoch, pick.previous",
            5,
        );
        self.run(|s| {
            s.with(|c| {
                let rows = c.query(&sql, &[&name, &mailboxes, &except, &n, &ttl])?;
                Ok(rows
                    .iter()
                    .map(|r| Grant {
                        mailbox: r.get(0),
                        epoch: r.get(1),
                        previous: r.get(2),
                    })
                    .collect())
            })
        })
    }

    /// Hands `mailbox` back (free for any agent now), if this agent still holds it at `epoch`.
    pub(crate) fn release(&self, name: &str, mailbox: &str, epoch: i64) -> LResult<bool> {
        self.run(|s| {
            s.with(|c| {
                Ok(c.execute(
                    "UPDATE leases SET agent = NULL, until = NULL, release_requested = false
                     WHERE mailbox = $1 AND agent = $2 AND epoch = $3",
                    &[&mailbox, &name, &epoch],
                )? == 1)
            })
        })
    }

    /// The agent stops: its row goes, so that the others count it out at once.
    pub(crate) fn leave(&self, name: &str, instance: &str) -> LResult<()> {
        self.run(|s| {
            s.with(|c| {
                c.execute(
                    "DELETE FROM agents WHERE name = $1 AND instance = $2",
                    &[&name, &instance],
                )?;
                Ok(())
            })
        })
    }

    /// Asks the owner of `mailbox` to hand it back: its owner, or `None` when nobody holds it.
    pub(crate) fn request_release(&self, mailbox: &str) -> LResult<Option<String>> {
        self.run(|s| {
            s.with(|c| {
                let row = c.query_opt(
                    "UPDATE leases SET release_requested = true
                     WHERE mailbox = $1 AND agent IS NOT NULL AND until > now()
                     RETURNING agent",
                    &[&mailbox],
                )?;
                Ok(row.map(|r| r.get(0)))
            })
        })
    }

    /// The agent whose live lease covers `mailbox`, if any.
    pub(crate) fn owner(&self, mailbox: &str) -> LResult<Option<String>> {
        self.run(|s| {
            s.with(|c| {
                let row = c.query_opt(
                    "SELECT agent FROM leases WHERE mailbox = $1 AND agent IS NOT NULL AND until > now()",
                    &[&mailbox],
                )?;
                Ok(row.map(|r| r.get(0)))
            })
        })
    }

    /// Every lease, by mailbox.
    pub(crate) fn list(&self) -> LResult<Vec<LeaseRow>> {
        self.run(|s| {
            s.with(|c| {
                let rows = c.query(
                    "SELECT mailbox, agent, epoch,
                         to_char(until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                         coalesce(until > now(), false)
                     FROM leases ORDER BY mailbox",
                    &[],
                )?;
                Ok(rows
                    .iter()
                    .map(|r| LeaseRow {
                        mailbox: r.get(0),
                        agent: r.get(1),
                        epoch: r.get(2),
                        until: r.get(3),
                        live: r.get(4),
                    })
                    .collect())
            })
        })
    }

    /// Every agent that has not left, with how many mailboxes it holds.
    pub(crate) fn agents(&self, ttl: f64) -> LResult<Vec<AgentRow>> {
        let sql = with_ttl(
            "SELECT a.name,
                 to_char(a.last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                 a.last_seen > now() - $ttl,
                 (SELECT count(*) FROM leases l WHERE l.agent = a.name AND l.until > now())
             FROM agents a ORDER BY a.name",
            1,
        );
        self.run(|s| {
            s.with(|c| {
                let rows = c.query(&sql, &[&ttl])?;
                Ok(rows
                    .iter()
                    .map(|r| AgentRow {
                        name: r.get(0),
                        last_seen: r.get(1),
                        live: r.get(2),
                        mailboxes: r.get(3),
                    })
                    .collect())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_refuse_what_the_agent_does_not_hold_and_keep_a_lost_epoch_for_the_database() {
        let f = Fences::default();
        // Off: commands write as on sled.
        assert!(f.holds("alice"));
        assert!(f.fence("alice").unwrap().is_none());
        f.enable("east");
        assert!(!f.holds("alice"));
        assert!(matches!(
            f.fence("alice"),
            Err(PgError::Fenced { epoch: None, .. })
        ));
        f.hold("alice", 7);
        assert!(f.holds("alice"));
        let fence = f.fence("alice").unwrap().unwrap();
        assert_eq!((fence.agent.as_str(), fence.epoch), ("east", 7));
        // Lost: not worked any more, but a batch in hand still goes to the epoch check.
        f.lapse("alice");
        assert!(!f.holds("alice"));
        assert_eq!(f.fence("alice").unwrap().unwrap().epoch, 7);
        // Handed back: refused here.
        f.drop_lease("alice");
        assert!(f.fence("alice").is_err());
    }
}
