//! Collecting configuration problems: every check pushes what it finds and goes on, so one
//! run of `magistral check` lists all of them.

use std::path::PathBuf;

use crate::config::{ConfigError, ConfigProblem};

/// The problems found so far while building a catalog.
#[derive(Debug)]
pub(super) struct Problems {
    /// The configuration file, where most fields live.
    config_file: Option<PathBuf>,
    list: Vec<ConfigProblem>,
}

impl Problems {
    pub(super) fn new(config_file: Option<PathBuf>) -> Self {
        Self { config_file, list: Vec::new() }
    }

    /// A problem in `file` (a stream or schema file, or the config file).
    pub(super) fn push(&mut self, file: Option<PathBuf>, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigProblem::new(file, field, message));
    }

    /// A problem in the configuration file.
    pub(super) fn in_config(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(self.config_file.clone(), field, message);
    }

    /// The outcome of resolving one configured item named `section.name` (a directory, a
    /// route, a responder, a subscription): its value, or its problems collected under
    /// `section.name.field` (`section.name` for the item as a whole).
    pub(super) fn resolved<T>(&mut self, item: &str, outcome: Result<T, Vec<(String, String)>>) -> Option<T> {
        match outcome {
            Ok(value) => Some(value),
            Err(list) => {
                for (field, message) in list {
                    let field = if field.is_empty() { item.to_owned() } else { format!("{item}.{field}") };
                    self.in_config(field, message);
                }
                None
            }
        }
    }

    /// `value` when nothing was found, or everything found.
    pub(super) fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, ConfigError> {
        if self.list.is_empty() { Ok(value()) } else { Err(ConfigError { problems: self.list }.located()) }
    }
}
