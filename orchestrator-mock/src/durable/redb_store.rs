//! The default [`PlanStore`]: one redb database file, `data_dir/state.redb`.
//!
//! redb is pure Rust, ACID and crash-safe: a commit with
//! `Durability::Immediate` (the default) is on disk when it returns, and a
//! crash at any point leaves the last committed transaction (copy-on-write
//! B-trees and a double-buffered commit slot), so there is no torn tail to
//! repair here. Table `plans` maps a plan id to its own fields (a
//! [`PlanRecord`] without steps) and table `steps` maps (plan id, index) to
//! a [`super::StepRecord`], both as JSON (small, readable with any redb
//! tool, tolerant of added fields): a change to one step writes one row.
//!
//! What it does not do: share the database between processes (redb locks
//! the file), or keep finished plans small; nothing is ever deleted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Change, DurableError, PlanRecord, PlanStore};

/// File name of the state database inside `data_dir`.
pub const STATE_FILE: &str = "state.redb";

const PLANS: TableDefinition<&str, &[u8]> = TableDefinition::new("plans");
const STEPS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("steps");

/// How long [`RedbStore::open`] waits for another handle in this process to
/// let go of the file (an orchestrator restarted in the same process).
const OPEN_RETRY: Duration = Duration::from_secs(3);

/// The redb backend.
pub struct RedbStore {
    path: PathBuf,
    db: Database,
    sync: bool,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (creating if needed) `dir/state.redb`. With `sync` off
    /// (`sync_writes = false`, benchmarks only) commits do not wait for the
    /// disk and a crash may lose them.
    ///
    /// # Errors
    /// [`DurableError::Open`] when the file cannot be created, opened or
    /// is held by another process.
    pub fn open(dir: &Path, sync: bool) -> Result<RedbStore, DurableError> {
        let path = dir.join(STATE_FILE);
        let open_error = |message: String| DurableError::Open {
            path: path.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let started = std::time::Instant::now();
        let db = loop {
            match Database::create(&path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < OPEN_RETRY => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(open_error(e.to_string())),
            }
        };
        // Create the table so a fresh database reads as empty.
        let txn = db.begin_write().map_err(|e| open_error(e.to_string()))?;
        txn.open_table(PLANS)
            .map_err(|e| open_error(e.to_string()))?;
        txn.open_table(STEPS)
            .map_err(|e| open_error(e.to_string()))?;
        txn.commit().map_err(|e| open_error(e.to_string()))?;
        Ok(RedbStore { path, db, sync })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl PlanStore for RedbStore {
    fn load(&self) -> Result<Vec<PlanRecord>, DurableError> {
        let read = |e: &dyn std::fmt::Display| DurableError::Commit(format!("read: {e}"));
        let txn = self.db.begin_read().map_err(|e| read(&e))?;
        let table = txn.open_table(PLANS).map_err(|e| read(&e))?;
        let steps = txn.open_table(STEPS).map_err(|e| read(&e))?;
        let mut plans = Vec::new();
        for entry in table.iter().map_err(|e| read(&e))? {
            let (key, value) = entry.map_err(|e| read(&e))?;
            let id = key.value();
            let mut record: PlanRecord =
                serde_json::from_slice(value.value()).map_err(|e| DurableError::Decode {
                    key: id.to_string(),
                    message: e.to_string(),
                })?;
            for row in steps
                .range((id, 0)..=(id, u64::MAX))
                .map_err(|e| read(&e))?
            {
                let (step_key, value) = row.map_err(|e| read(&e))?;
                let step =
                    serde_json::from_slice(value.value()).map_err(|e| DurableError::Decode {
                        key: format!("{id}/{}", step_key.value().1),
                        message: e.to_string(),
                    })?;
                record.steps.push(step);
            }
            plans.push(record);
        }
        Ok(plans)
    }

    fn commit(&self, changes: &[Change]) -> Result<(), DurableError> {
        let fail = |e: &dyn std::fmt::Display| DurableError::Commit(e.to_string());
        let mut txn = self.db.begin_write().map_err(|e| fail(&e))?;
        if !self.sync {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| fail(&e))?;
        }
        {
            let mut table = txn.open_table(PLANS).map_err(|e| fail(&e))?;
            let mut steps = txn.open_table(STEPS).map_err(|e| fail(&e))?;
            for change in changes {
                match change {
                    Change::PutPlan(plan) => {
                        let bytes = serde_json::to_vec(plan).map_err(|e| fail(&e))?;
                        table
                            .insert(plan.id.as_str(), bytes.as_slice())
                            .map_err(|e| fail(&e))?;
                    }
                    Change::PutStep {
                        plan_id,
                        index,
                        step,
                    } => {
                        let bytes = serde_json::to_vec(step).map_err(|e| fail(&e))?;
                        steps
                            .insert((plan_id.as_str(), *index as u64), bytes.as_slice())
                            .map_err(|e| fail(&e))?;
                    }
                }
            }
        }
        // Dropping an uncommitted transaction aborts it: all or nothing.
        txn.commit().map_err(|e| fail(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PlanStatus;

    fn plan(id: &str, status: PlanStatus) -> PlanRecord {
        PlanRecord {
            id: id.into(),
            name: None,
            status,
            created_at: "2026-01-01T00:00:00Z".into(),
            steps: Vec::new(),
            cancel_from: None,
            submitted_by: Some("agent-1".into()),
            // Stored with the plan's own row: it survives reopening.
            traceparent: Some(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    .parse()
                    .unwrap(),
            ),
        }
    }

    #[test]
    fn committed_plans_are_there_after_reopening_and_the_last_write_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), true).unwrap();
        assert!(store.load().unwrap().is_empty());
        store
            .commit(&[
                Change::PutPlan(Box::new(plan("a", PlanStatus::PendingApproval))),
                Change::PutPlan(Box::new(plan("b", PlanStatus::PendingApproval))),
            ])
            .unwrap();
        store
            .commit(&[Change::PutPlan(Box::new(plan("a", PlanStatus::Running)))])
            .unwrap();
        drop(store);
        let store = RedbStore::open(dir.path(), true).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(
            loaded,
            vec![
                plan("a", PlanStatus::Running),
                plan("b", PlanStatus::PendingApproval)
            ]
        );
    }

    #[test]
    fn steps_are_rows_of_their_own_and_one_step_can_change_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), true).unwrap();
        let mut whole = plan("p", PlanStatus::Running);
        for i in 0..12 {
            let step: super::super::StepRecord = serde_json::from_value(serde_json::json!({
                "view": {
                    "index": i, "task_id": format!("t{i}"), "task": "crm.create_ticket",
                    "version": "1", "inputs": {"title": "x"}, "status": "waiting",
                    "attempt": 0, "worker": null, "error_code": null,
                    "error_message": null, "output": null
                },
                "idempotent": false,
                "accepted": false
            }))
            .unwrap();
            whole.steps.push(step);
        }
        store.commit(&Change::whole_plan(&whole)).unwrap();
        let mut changed = whole.clone();
        changed.steps[10].accepted = true;
        store
            .commit(&[
                Change::plan_fields(&changed),
                Change::step(&changed, 10).unwrap(),
            ])
            .unwrap();
        drop(store);
        let store = RedbStore::open(dir.path(), true).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(
            loaded,
            vec![changed],
            "steps come back in index order, 10 before 11"
        );
    }
}
