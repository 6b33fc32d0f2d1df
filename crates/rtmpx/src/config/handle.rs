//! The running configuration, replaced as a whole on reload.

use std::sync::{Arc, Mutex};

use super::Config;
use crate::sync::lock;

/// Shares the current [`Config`]; cheap to clone. Read it once per event ([`ConfigHandle::get`])
/// so that a reload never splits one decision between two configurations.
#[derive(Clone)]
pub struct ConfigHandle(Arc<Mutex<Arc<Config>>>);

impl ConfigHandle {
    pub fn new(config: Arc<Config>) -> ConfigHandle {
        ConfigHandle(Arc::new(Mutex::new(config)))
    }

    /// The configuration in force now.
    pub fn get(&self) -> Arc<Config> {
        lock(&self.0).clone()
    }

    /// Swaps in a validated configuration (reload); sessions read it at their next decision.
    pub fn replace(&self, config: Arc<Config>) {
        *lock(&self.0) = config;
    }
}
