//! Locking helpers shared by the engine.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Lock `m`, carrying on through poisoning: every lock in the engine guards data that stays
/// consistent between statements (maps and counters updated in one step), so a panic on
/// another thread while it held the lock leaves nothing half-written to refuse.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-lock `rw`, carrying on through poisoning (see [`lock`]).
pub fn read<T: ?Sized>(rw: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    rw.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-lock `rw`, carrying on through poisoning (see [`lock`]).
pub fn write<T: ?Sized>(rw: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    rw.write().unwrap_or_else(|p| p.into_inner())
}
