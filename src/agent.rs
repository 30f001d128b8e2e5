//! The running agent as commands see it: each mailbox task's live state, and bells that wake
//! the tasks. `supervisor` fills it as it starts tasks; the control socket's commands
//! (`status`, `sync`, `activities send`, `outbox retry`) and `/healthz` read and ring it.
//!
//! A leaf module (only [`crate::worker`]'s state types and tokio), so that `commands`,
//! `http` and `supervisor` share the handle without importing each other.

use crate::worker::{Live, LiveState};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Per mailbox: its live state and the bell that wakes its task.
pub(crate) type Tasks = BTreeMap<String, (Live, Arc<Notify>)>;

/// A cheap, cloneable handle on the running agent's tasks.
#[derive(Clone, Default)]
pub(crate) struct AgentHandle {
    tasks: Arc<Mutex<Tasks>>,
    /// Wakes the outbox runner (a send was queued or retried).
    outbox: Arc<Notify>,
    /// The agent's process id, which `status` shows.
    pub pid: u32,
}

impl AgentHandle {
    /// The handle of the agent running as process `pid`, with no tasks yet.
    pub(crate) fn new(pid: u32) -> AgentHandle {
        AgentHandle {
            pid,
            ..Default::default()
        }
    }

    /// Replaces the mailbox tasks (at start, and after a reload restarted them).
    pub(crate) fn set_tasks(&self, tasks: Tasks) {
        if let Ok(mut m) = self.tasks.lock() {
            *m = tasks;
        }
    }

    /// The bell the outbox runner waits on; [`AgentHandle::wake_outbox`] rings it.
    pub(crate) fn outbox_bell(&self) -> Arc<Notify> {
        self.outbox.clone()
    }

    /// Wakes one mailbox (or all) for an immediate pass.
    pub(crate) fn wake(&self, mailbox: Option<&str>) -> String {
        let Ok(m) = self.tasks.lock() else {
            return "agent state is poisoned\n".into();
        };
        let mut n = 0;
        for (name, (_, w)) in m.iter() {
            if mailbox.is_none_or(|x| x == name) {
                w.notify_one();
                n += 1;
            }
        }
        format!("the running agent (pid {}) tracks continuously; woke {n} mailbox(es) for an immediate pass\n", self.pid)
    }

    /// Makes the outbox runner look at the queue now.
    pub(crate) fn wake_outbox(&self) {
        self.outbox.notify_one();
    }

    /// The live state of `mailbox`'s task, if it runs.
    pub(crate) fn live(&self, mailbox: &str) -> Option<LiveState> {
        let m = self.tasks.lock().ok()?;
        let (l, _) = m.get(mailbox)?;
        Some(l.get())
    }
}
