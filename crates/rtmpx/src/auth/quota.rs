//! Counters for publishers per app and players per stream, released by dropping a [`Slot`].

use crate::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    AppPublishers(String),
    StreamPlayers(String, String),
}

/// Shared counters; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Quotas {
    counts: Arc<Mutex<HashMap<Key, usize>>>,
}

/// One place in a quota, given back on drop.
#[derive(Debug)]
pub struct Slot {
    counts: Arc<Mutex<HashMap<Key, usize>>>,
    key: Key,
}

impl Quotas {
    /// A publisher place in `app`, or `None` when `limit` publishers are there already.
    pub fn publisher(&self, app: &str, limit: usize) -> Option<Slot> {
        self.take(Key::AppPublishers(app.to_owned()), limit)
    }

    /// A player place on `app/stream`, or `None` when `limit` players are there already.
    pub fn player(&self, app: &str, stream: &str, limit: usize) -> Option<Slot> {
        self.take(Key::StreamPlayers(app.to_owned(), stream.to_owned()), limit)
    }

    fn take(&self, key: Key, limit: usize) -> Option<Slot> {
        let mut counts = lock(&self.counts);
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(Slot { counts: self.counts.clone(), key })
    }

    /// Entries with a count (tests check that nothing leaks).
    #[cfg(test)]
    pub fn entries(&self) -> usize {
        lock(&self.counts).len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_release() {
        let q = Quotas::default();
        let a = q.publisher("live", 2).unwrap();
        let b = q.publisher("live", 2).unwrap();
        assert!(q.publisher("live", 2).is_none());
        assert!(q.publisher("other", 2).is_some(), "apps count separately");
        drop(a);
        let c = q.publisher("live", 2).unwrap();
        let p1 = q.player("live", "s", 1).unwrap();
        assert!(q.player("live", "s", 1).is_none());
        assert!(q.player("live", "t", 1).is_some());
        assert!(q.player("live", "x", 0).is_none());
        drop((b, c, p1));
        assert_eq!(q.entries(), 0, "released slots leave no entries");
    }
}
