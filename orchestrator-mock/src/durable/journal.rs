//! Group commit in front of a [`PlanStore`]: one writer thread, one commit
//! for every change waiting when the previous commit ended.
//!
//! The state machine calls [`JournalSender::record`] under its lock; each
//! change gets the next sequence number, so the journal sees changes in the
//! order they were made. The writer takes every waiting change (a later
//! change to the same plan replaces an earlier one in the batch), commits
//! them in one transaction and then publishes the highest sequence number
//! it made durable. Whoever must not act before a change is durable (the
//! admin API before it answers, a session before it sends an `Assignment`
//! or a `ResultAck`) waits on [`Durable::wait`] for that number.
//!
//! A failed commit (disk full) is retried with a growing pause (up to
//! [`MAX_RETRY_PAUSE`]), with the changes that arrived meanwhile merged in;
//! nothing is dropped and the durable number does not move, so nothing that
//! depends on the batch goes out.
//!
//! What it does not do: read. Loading happens once at start, through the
//! store itself.

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use super::{Change, PlanStore};

/// Longest pause between two tries of a failing commit.
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Most changes taken into one commit.
pub const MAX_BATCH: usize = 4096;

enum Entry {
    Change(u64, Change),
    Stop(mpsc::Sender<()>),
}

/// The recording half, owned by the state machine.
#[derive(Debug)]
pub struct JournalSender {
    seq: u64,
    tx: Option<mpsc::Sender<Entry>>,
    /// For the in-memory journal: changes are "durable" at once.
    immediate: Option<watch::Sender<u64>>,
    warned: bool,
}

impl JournalSender {
    /// Queues a change for the next commit; returns its sequence number.
    pub fn record(&mut self, change: Change) -> u64 {
        self.seq += 1;
        if let Some(tx) = &self.tx {
            if tx.send(Entry::Change(self.seq, change)).is_err() && !self.warned {
                self.warned = true;
                tracing::warn!("the state journal is closed; later changes are not durable");
            }
        } else if let Some(now) = &self.immediate {
            now.send_replace(self.seq);
        }
        self.seq
    }

    /// The sequence number of the latest recorded change (0 before any).
    pub fn last(&self) -> u64 {
        self.seq
    }
}

/// The change was not durable in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the state store did not commit the change in time (disk full or failing?)")]
pub struct NotDurable;

/// The waiting half: how far the journal has committed. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Durable {
    rx: watch::Receiver<u64>,
}

impl Durable {
    /// The highest durable sequence number.
    pub fn current(&self) -> u64 {
        *self.rx.borrow()
    }

    /// Waits until change `seq` is durable, for at most `timeout`.
    ///
    /// # Errors
    /// [`NotDurable`] when the time ran out or the journal stopped first.
    pub async fn wait(&self, seq: u64, timeout: Duration) -> Result<(), NotDurable> {
        if self.current() >= seq {
            return Ok(());
        }
        let mut rx = self.rx.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|d| *d >= seq)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(NotDurable),
        }
    }
}

/// The running writer thread; [`JournalHandle::close`] stops it after a
/// last commit and releases the store (and its file lock).
#[derive(Debug)]
pub struct JournalHandle {
    tx: mpsc::Sender<Entry>,
    thread: Option<JoinHandle<()>>,
}

impl JournalHandle {
    /// Commits what is waiting, stops the writer and drops the store.
    /// Blocks until done.
    pub fn close(mut self) {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Entry::Stop(ack)).is_ok() {
            let _ = done.recv();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A journal that keeps nothing: every change is "durable" when recorded.
/// For unit tests of the state machine.
pub fn in_memory() -> (JournalSender, Durable) {
    let (durable_tx, rx) = watch::channel(0);
    (
        JournalSender {
            seq: 0,
            tx: None,
            immediate: Some(durable_tx),
            warned: false,
        },
        Durable { rx },
    )
}

/// Starts the writer thread over `store`.
///
/// # Errors
/// The I/O error when the thread cannot be started.
pub fn spawn(
    store: Box<dyn PlanStore>,
) -> std::io::Result<(JournalSender, Durable, JournalHandle)> {
    let (tx, rx) = mpsc::channel();
    let (durable_tx, durable_rx) = watch::channel(0);
    let thread = std::thread::Builder::new()
        .name("state-journal".into())
        .spawn(move || Writer { store, durable_tx }.run(&rx))?;
    Ok((
        JournalSender {
            seq: 0,
            tx: Some(tx.clone()),
            immediate: None,
            warned: false,
        },
        Durable { rx: durable_rx },
        JournalHandle {
            tx,
            thread: Some(thread),
        },
    ))
}

struct Writer {
    store: Box<dyn PlanStore>,
    durable_tx: watch::Sender<u64>,
}

#[derive(Default)]
struct Batch {
    changes: Vec<Change>,
    index: HashMap<String, usize>,
    last_seq: u64,
}

impl Batch {
    fn add(&mut self, seq: u64, change: Change) {
        self.last_seq = seq;
        let key = change.key();
        match self.index.get(&key) {
            Some(&i) => self.changes[i] = change,
            None => {
                self.index.insert(key, self.changes.len());
                self.changes.push(change);
            }
        }
    }
}

impl Writer {
    fn run(self, rx: &mpsc::Receiver<Entry>) {
        let mut batch = Batch::default();
        let mut pause = Duration::from_millis(50);
        let mut stop: Option<mpsc::Sender<()>> = None;
        loop {
            if batch.changes.is_empty() {
                if let Some(ack) = stop.take() {
                    let _ = ack.send(());
                    return;
                }
                match rx.recv() {
                    Ok(Entry::Change(seq, change)) => batch.add(seq, change),
                    Ok(Entry::Stop(ack)) => {
                        let _ = ack.send(());
                        return;
                    }
                    Err(_) => return,
                }
            }
            while batch.changes.len() < MAX_BATCH && stop.is_none() {
                match rx.try_recv() {
                    Ok(Entry::Change(seq, change)) => batch.add(seq, change),
                    Ok(Entry::Stop(ack)) => stop = Some(ack),
                    Err(_) => break,
                }
            }
            match self.store.commit(&batch.changes) {
                Ok(()) => {
                    self.durable_tx.send_replace(batch.last_seq);
                    batch = Batch::default();
                    pause = Duration::from_millis(50);
                }
                Err(e) if stop.is_some() => {
                    tracing::error!(error = %e, changes = batch.changes.len(), "last commit before closing failed; these changes are lost");
                    batch = Batch::default();
                }
                Err(e) => {
                    tracing::error!(error = %e, changes = batch.changes.len(), retry_in = ?pause, "state commit failed; retrying (nothing that depends on it is sent meanwhile)");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PlanStatus;
    use crate::durable::{MemoryStore, PlanRecord};
    use std::sync::Arc;

    fn put(id: &str, status: PlanStatus) -> Change {
        Change::PutPlan(Box::new(PlanRecord {
            id: id.into(),
            name: None,
            status,
            created_at: String::new(),
            steps: Vec::new(),
            cancel_from: None,
            submitted_by: None,
            traceparent: None,
        }))
    }

    #[tokio::test]
    async fn a_change_is_durable_only_after_its_commit_and_a_failing_commit_is_retried() {
        let store = Arc::new(MemoryStore::new());
        store.fail_next_commits(2);
        let (mut sender, durable, handle) = spawn(Box::new(store.clone())).unwrap();
        let seq = sender.record(put("a", PlanStatus::PendingApproval));
        assert_eq!(
            durable.wait(seq, Duration::from_millis(20)).await,
            Err(NotDurable),
            "the disk is full: nothing is durable yet"
        );
        durable.wait(seq, Duration::from_secs(10)).await.unwrap();
        assert_eq!(store.load().unwrap().len(), 1);
        handle.close();
    }

    #[tokio::test]
    async fn changes_waiting_together_share_one_commit_and_the_last_one_wins() {
        let store = Arc::new(MemoryStore::new());
        // Hold the writer in a failing commit so that changes pile up.
        store.fail_next_commits(1);
        let (mut sender, durable, handle) = spawn(Box::new(store.clone())).unwrap();
        sender.record(put("a", PlanStatus::PendingApproval));
        for _ in 0..100 {
            sender.record(put("b", PlanStatus::PendingApproval));
        }
        let last = sender.record(put("a", PlanStatus::Running));
        durable.wait(last, Duration::from_secs(10)).await.unwrap();
        assert!(store.commits() <= 2, "{} commits", store.commits());
        let plans = store.load().unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].status, PlanStatus::Running);
        handle.close();
    }
}
