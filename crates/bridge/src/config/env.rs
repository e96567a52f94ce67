//! Access to environment variables through a trait, so the whole config pipeline can be
//! tested with a map instead of the process environment (`std::env::set_var` is banned).

use std::collections::HashMap;

/// A source of environment variables.
///
/// The config pipeline reads variables only through this trait: `${VAR}` interpolation at
/// load time and `SecretRef::resolve` at start-up.
pub trait Env {
    /// The value of `name`, or `None` when it is unset (or not valid Unicode).
    fn var(&self, name: &str) -> Option<String>;
}

/// The environment of the running process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        // A non-Unicode value cannot be a valid config value; treating it as unset makes the
        // caller report "not set" with a location instead of a lossy conversion.
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Env for HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}
