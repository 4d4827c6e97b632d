//! Locks that outlive a panic elsewhere: one place for the edge's policy on poisoned locks.
//!
//! A panic in a thread that holds a lock is a bug (the panic hook logs it); it must not
//! take every later connection, probe or relayed packet down with it. Every critical
//! section in the edge replaces whole values (a table entry, an `Arc`, a counter), so the
//! data behind a poisoned lock is still whole, and these take it back.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`], taking the data back if the lock is poisoned.
pub trait MutexExt<T: ?Sized> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`RwLock::read`] and [`RwLock::write`], taking the data back if the lock is poisoned.
pub trait RwLockExt<T: ?Sized> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T>;
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = std::sync::Arc::new(Mutex::new(7));
        let r = std::sync::Arc::new(RwLock::new(8));
        let (m2, r2) = (m.clone(), r.clone());
        let _ = std::thread::spawn(move || {
            let _m = m2.lock_unpoisoned();
            let _r = r2.write_unpoisoned();
            panic!("a bug while holding both");
        })
        .join();
        assert!(m.is_poisoned() && r.is_poisoned());
        assert_eq!(*m.lock_unpoisoned(), 7);
        assert_eq!(*r.read_unpoisoned(), 8);
        *r.write_unpoisoned() = 9;
        assert_eq!(*r.read_unpoisoned(), 9);
    }
}
