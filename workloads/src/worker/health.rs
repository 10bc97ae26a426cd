//! Readiness from the two things the worker depends on: NATS and PostgreSQL.

use std::sync::{Arc, Mutex};

use nats_cdr_observability::Readiness;

/// Tracks why the worker cannot work now, per dependency, and mirrors it into [`Readiness`].
#[derive(Debug)]
pub struct Health {
    readiness: Arc<Readiness>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    starting: Option<String>,
    nats: Option<String>,
    database: Option<String>,
}

impl Health {
    /// Not ready (`starting`) until [`started`](Self::started).
    pub fn new(readiness: Arc<Readiness>) -> Self {
        readiness.set_not_ready("starting");
        Self {
            readiness,
            state: Mutex::new(State {
                starting: Some("starting".to_owned()),
                ..State::default()
            }),
        }
    }

    /// Start-up is at `step` (not ready).
    pub fn starting(&self, step: impl Into<String>) {
        self.update(|state| state.starting = Some(step.into()));
    }

    /// Start-up is done.
    pub fn started(&self) {
        self.update(|state| state.starting = None);
    }

    /// NATS is unusable, for `reason`.
    pub fn nats_down(&self, reason: &str) {
        self.update(|state| state.nats = Some(reason.to_owned()));
    }

    /// NATS answered.
    pub fn nats_up(&self) {
        self.update(|state| state.nats = None);
    }

    /// PostgreSQL is unusable, for `reason`.
    pub fn database_down(&self, reason: &str) {
        self.update(|state| state.database = Some(reason.to_owned()));
    }

    /// PostgreSQL answered.
    pub fn database_up(&self) {
        self.update(|state| state.database = None);
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        let reasons: Vec<String> = [
            state.starting.as_ref().map(|r| format!("starting: {r}")),
            state
                .nats
                .as_ref()
                .map(|r| format!("nats unavailable: {r}")),
            state
                .database
                .as_ref()
                .map(|r| format!("database unavailable: {r}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if reasons.is_empty() {
            self.readiness.set_ready();
        } else {
            self.readiness.set_not_ready(reasons.join("; "));
        }
    }
}
