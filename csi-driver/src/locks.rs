//! Per-resource in-flight locks: a second concurrent call on the same volume
//! (or the same name) fails fast with ABORTED instead of queueing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Set of keys with an operation in flight.
#[derive(Clone, Default)]
pub struct Locks {
    busy: Arc<Mutex<HashSet<String>>>,
}

/// Held while an operation runs; releases its keys on drop.
pub struct Guard {
    busy: Arc<Mutex<HashSet<String>>>,
    keys: Vec<String>,
}

impl Locks {
    /// Takes every key or none; ABORTED naming the first busy one.
    pub fn acquire(&self, keys: &[String]) -> Result<Guard> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = keys.iter().find(|k| busy.contains(*k)) {
            return Err(Error::Aborted(format!(
                "an operation on {k} is already in progress; retry later"
            )));
        }
        for k in keys {
            busy.insert(k.clone());
        }
        Ok(Guard {
            busy: self.busy.clone(),
            keys: keys.to_vec(),
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            busy.remove(k);
        }
    }
}
