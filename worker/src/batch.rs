//! Group commit's first half, shared by the audit writer and the journal
//! writer: wait for one request, then take every request already waiting
//! (up to a bound), so one write and one disk sync serve them all.
//!
//! What it does not do: write anything; each writer commits its batch.

use std::sync::mpsc;

/// Waits for the next request and takes up to `max` in all; `None` once
/// every sender is gone (the writer thread then ends).
pub fn next_batch<T>(rx: &mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = rx.recv().ok()?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_what_waits_up_to_the_bound_and_ends_with_the_senders() {
        let (tx, rx) = mpsc::channel();
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        assert_eq!(next_batch(&rx, 3), Some(vec![0, 1, 2]));
        assert_eq!(next_batch(&rx, 3), Some(vec![3, 4]));
        drop(tx);
        assert_eq!(next_batch(&rx, 3), None);
    }
}
