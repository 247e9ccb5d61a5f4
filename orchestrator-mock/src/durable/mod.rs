//! Durable orchestrator state: the records that must survive a kill -9,
//! the one trait a backend implements ([`PlanStore`]), and the group
//! committer in front of it ([`journal`]).
//!
//! What is stored: every plan as one row of its own fields and one row per
//! step ([`PlanRecord`], [`StepRecord`]), so a change to one step of a long
//! plan writes that step, not the whole plan. Each step holds its attempts (who holds the current one, accepted or not, how each
//! earlier one ended), its place in the queue (`queue_seq`) and its cancel
//! and deadline settings. Leases are per worker identity and are *derived*:
//! the holder of an attempt is durable, the lease expiry is not, because
//! after a restart every attempt still assigned is leased to its holder
//! from the restart time (the contract's rule). Results and audit records
//! live in the append-only files of [`crate::store`], which the admin API
//! lists; the plan record only carries what a result did to its step.
//!
//! Backends: [`redb_store::RedbStore`] (the default, one file in
//! `data_dir`) and [`MemoryStore`] (tests; it can be told to fail).
//! A PostgreSQL backend maps a [`Change`] batch onto one SQL transaction of
//! upserts (plans, steps, attempts as rows); see ARCHITECTURE.md,
//! "Durable state".
//!
//! What it does not do: decide anything. The state machine in
//! [`crate::state`] decides; this module only keeps what it decided.

pub mod journal;
pub mod redb_store;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::api::{PlanStatus, StepView};

/// Why the durable store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DurableError {
    /// The store could not be opened (permissions, a corrupt file, another
    /// process holding it); fix `data_dir` and start again.
    #[error("state store {path}: {message}")]
    Open {
        /// The database file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A commit failed (disk full, I/O error); nothing of the batch is
    /// stored. The journal retries it; callers waiting for it keep waiting.
    #[error("state store commit failed: {0}")]
    Commit(String),
    /// A stored record could not be decoded; the file was written by an
    /// incompatible version or damaged. Refuses to start.
    #[error("state store holds a bad record {key:?}: {message}")]
    Decode {
        /// The record's key.
        key: String,
        /// The decode error.
        message: String,
    },
}

/// One plan as stored: everything needed to continue it after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    /// Plan id.
    pub id: String,
    /// Name given at submission.
    pub name: Option<String>,
    /// Current status.
    pub status: PlanStatus,
    /// Submission time, RFC 3339.
    pub created_at: String,
    /// The steps, in order.
    pub steps: Vec<StepRecord>,
    /// Index of the first step a cancel applies to, when one was asked
    /// for: that step and every later one never start again.
    #[serde(default)]
    pub cancel_from: Option<usize>,
    /// The plan's W3C trace context (submitted, or made at submission);
    /// `None` in records written before it existed.
    #[serde(default)]
    pub traceparent: Option<private_worker_proto::trace::TraceParent>,
    /// The name of the admin token that submitted the plan; `None` in
    /// records written before it was kept.
    #[serde(default)]
    pub submitted_by: Option<String>,
}

/// One step as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// What the admin API shows (status, attempt, holder, attempts, ...).
    pub view: StepView,
    /// The registry's idempotency flag.
    pub idempotent: bool,
    /// Whether the worker sent `Accept` for the current attempt.
    pub accepted: bool,
    /// Position in the queue while queued (smaller goes first).
    #[serde(default)]
    pub queue_seq: u64,
    /// The step's own deadline (RFC 3339), from the plan request.
    #[serde(default)]
    pub deadline: Option<String>,
    /// The registry task's timeout in seconds, used for the deadline when
    /// the step has none.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// The signed approval given for this step when its plan was approved
    /// (sent with every assignment of it).
    #[serde(default)]
    pub approval: Option<private_worker_proto::approval::Approval>,
}

/// One change for the store to make durable: one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Insert or replace a plan's own fields; its `steps` are ignored (they
    /// are rows of their own).
    PutPlan(Box<PlanRecord>),
    /// Insert or replace one step of a plan.
    PutStep {
        /// The plan.
        plan_id: String,
        /// The step's index in the plan.
        index: usize,
        /// The step.
        step: Box<StepRecord>,
    },
}

impl Change {
    /// The changes that store `plan` whole: its own fields, then every step.
    pub fn whole_plan(plan: &PlanRecord) -> Vec<Change> {
        let mut changes = Vec::with_capacity(plan.steps.len() + 1);
        changes.push(Change::plan_fields(plan));
        for index in 0..plan.steps.len() {
            changes.extend(Change::step(plan, index));
        }
        changes
    }

    /// The change that stores `plan`'s own fields (not its steps).
    pub fn plan_fields(plan: &PlanRecord) -> Change {
        Change::PutPlan(Box::new(PlanRecord {
            id: plan.id.clone(),
            name: plan.name.clone(),
            status: plan.status,
            created_at: plan.created_at.clone(),
            steps: Vec::new(),
            cancel_from: plan.cancel_from,
            traceparent: plan.traceparent,
            submitted_by: plan.submitted_by.clone(),
        }))
    }

    /// The change that stores step `index` of `plan`, if it has one.
    pub fn step(plan: &PlanRecord, index: usize) -> Option<Change> {
        plan.steps.get(index).map(|step| Change::PutStep {
            plan_id: plan.id.clone(),
            index,
            step: Box::new(step.clone()),
        })
    }

    /// The row the change writes; later changes to the same row in one
    /// batch replace earlier ones.
    pub fn key(&self) -> String {
        match self {
            Change::PutPlan(p) => p.id.clone(),
            Change::PutStep { plan_id, index, .. } => format!("{plan_id}/{index}"),
        }
    }
}

/// A backend for the orchestrator's durable state.
///
/// Shaped for several backends: [`PlanStore::commit`] takes a whole batch
/// (every change waiting when the previous commit ended) and must make it
/// durable atomically, so one transaction per batch is the whole contract.
/// Implementations are called from one writer thread at a time.
pub trait PlanStore: Send + Sync + 'static {
    /// Every stored plan, to rebuild the state at start.
    ///
    /// # Errors
    /// [`DurableError::Decode`] for a bad record, [`DurableError::Commit`]
    /// for a read failure.
    fn load(&self) -> Result<Vec<PlanRecord>, DurableError>;

    /// Makes every change durable, all or nothing, before returning.
    ///
    /// # Errors
    /// [`DurableError::Commit`] when nothing of the batch was stored.
    fn commit(&self, changes: &[Change]) -> Result<(), DurableError>;
}

/// A store in memory, for tests: survives nothing, and can be told to fail
/// the next commits (to play a full disk).
#[derive(Debug, Default)]
pub struct MemoryStore {
    plans: Mutex<BTreeMap<String, PlanRecord>>,
    fail_next: AtomicUsize,
    commits: AtomicUsize,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The next `n` commits fail with [`DurableError::Commit`].
    pub fn fail_next_commits(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// How many commits succeeded.
    pub fn commits(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }
}

impl PlanStore for MemoryStore {
    fn load(&self) -> Result<Vec<PlanRecord>, DurableError> {
        let plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        Ok(plans.values().cloned().collect())
    }

    fn commit(&self, changes: &[Change]) -> Result<(), DurableError> {
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(DurableError::Commit("injected failure (disk full)".into()));
        }
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        for change in changes {
            match change {
                Change::PutPlan(p) => {
                    let steps = plans.remove(&p.id).map(|old| old.steps).unwrap_or_default();
                    plans.insert(
                        p.id.clone(),
                        PlanRecord {
                            steps,
                            ..(**p).clone()
                        },
                    );
                }
                Change::PutStep {
                    plan_id,
                    index,
                    step,
                } => {
                    // A step row comes after (or with) its plan's row.
                    if let Some(plan) = plans.get_mut(plan_id) {
                        if plan.steps.len() <= *index {
                            plan.steps.resize(*index + 1, (**step).clone());
                        }
                        plan.steps[*index] = (**step).clone();
                    }
                }
            }
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl<T: PlanStore> PlanStore for std::sync::Arc<T> {
    fn load(&self) -> Result<Vec<PlanRecord>, DurableError> {
        (**self).load()
    }

    fn commit(&self, changes: &[Change]) -> Result<(), DurableError> {
        (**self).commit(changes)
    }
}
