//! Subscribers pinned to a contract version (`contract_version`): a message published under a
//! newer version of the contract is converted by the subscription's `down_conversion` (jq) and
//! validated against the pinned version before it is delivered, so a receiver written for v1
//! keeps receiving v1 while publishers move to v2. A conversion that fails, or whose result
//! the pinned version refuses, is a dead letter of its own class; it is never sent.
//!
//! Without a `down_conversion`, `magistral check` refuses the pin when a newer version of the
//! contract breaks consumers (see [`crate::contracts::compat`]); the messages of a newer
//! version that does not are delivered as published, still validated against the pin.

use std::sync::Arc;

use bytes::Bytes;

use super::retry_policy::Class;
use crate::config::{Config, SubscriptionConfig};
use crate::contracts::compat::{self, Verdict};
use crate::contracts::{Contract, Contracts, Origin};
use crate::subject;
use crate::transform::Transform;

/// A subscription's pin, resolved against the loaded contracts.
#[derive(Debug, Clone)]
pub struct Pin {
    /// The pinned version, compiled: what every delivered body must honour.
    pub pinned: Arc<Contract>,
    /// `ce-dataschema` of each newer version of the contract, whose messages are converted.
    pub newer: Vec<String>,
    /// jq from a newer version's data to the pinned one's.
    pub down: Option<Transform>,
}

impl PartialEq for Pin {
    fn eq(&self, other: &Self) -> bool {
        self.pinned.name == other.pinned.name
            && self.pinned.version == other.pinned.version
            && self.pinned.schema == other.pinned.schema
            && self.newer == other.newer
            && self.down == other.down
    }
}

impl Pin {
    /// The body to deliver for a message stamped `dataschema`: as published when it is not
    /// of a newer version, else converted and checked.
    ///
    /// # Errors
    /// `conversion-failed` (the jq program failed or yielded nothing) or `conversion-invalid`
    /// (the result does not honour the pinned version), with the reason.
    pub fn convert(&self, dataschema: Option<&str>, payload: &Bytes) -> Result<Bytes, (Class, String)> {
        let Some(from) = dataschema.filter(|d| self.newer.iter().any(|n| n == d)) else {
            return Ok(payload.clone());
        };
        let body = match &self.down {
            Some(down) => Bytes::from(down.apply(payload).map_err(|e| {
                (Class::ConversionFailed, format!("down_conversion from {from} to v{}: {e}", self.pinned.version))
            })?),
            None => payload.clone(),
        };
        let data: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| (Class::ConversionFailed, format!("down_conversion produced no JSON: {e}")))?;
        let (violations, total) = self.pinned.violations(&data, 5);
        if total > 0 {
            let listed: Vec<String> = violations.iter().map(|v| format!("{} {}", v.instance_path, v.message)).collect();
            return Err((
                Class::ConversionInvalid,
                format!(
                    "converted from {from}, the data does not honour {} v{} ({total} violation(s)): {}",
                    self.pinned.name,
                    self.pinned.version,
                    listed.join("; ")
                ),
            ));
        }
        Ok(body)
    }
}

/// The pin of a subscription's configuration, `(field, message)` for every problem.
pub(crate) fn resolve(
    cfg: &SubscriptionConfig,
    config: &Config,
    contracts: &Contracts,
) -> Result<Option<Pin>, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let down = match crate::transform::load(
        config,
        "down_conversion",
        cfg.down_conversion.as_ref(),
        cfg.down_conversion_file.as_ref(),
    ) {
        Ok(t) => t,
        Err(p) => {
            problems.push(p);
            None
        }
    };
    let Some(version) = cfg.contract_version else {
        if cfg.contract.is_some() || down.is_some() {
            problems.push((
                "contract_version".to_owned(),
                "contract and down_conversion only apply to a subscription pinned with contract_version".to_owned(),
            ));
        }
        return if problems.is_empty() { Ok(None) } else { Err(problems) };
    };
    // Only file contracts are known when configuration is checked.
    let files = || contracts.iter().filter(|c| c.origin == Origin::File);
    let name = match &cfg.contract {
        Some(name) => Some(name.clone()),
        None => {
            let mut names: Vec<&str> = files()
                .filter(|c| c.subjects.iter().any(|s| cfg.subjects.iter().any(|own| subject::overlap(s, own))))
                .map(|c| c.name.as_str())
                .collect();
            names.dedup();
            match names.as_slice() {
                [one] => Some((*one).to_owned()),
                [] => {
                    problems.push((
                        "contract_version".to_owned(),
                        "no contract governs this subscription's subjects: nothing to pin".to_owned(),
                    ));
                    None
                }
                several => {
                    problems.push((
                        "contract".to_owned(),
                        format!("several contracts govern these subjects ({}): name one", several.join(", ")),
                    ));
                    None
                }
            }
        }
    };
    let Some(name) = name else { return Err(problems) };
    let Some(pinned) = contracts.shared(&name, version).filter(|c| c.origin == Origin::File) else {
        problems.push(("contract_version".to_owned(), format!("contract {name} has no version {version}")));
        return Err(problems);
    };
    let newer: Vec<&Contract> = files().filter(|c| c.name == name && c.version > version).collect();
    if down.is_none() {
        for n in &newer {
            let report = compat::diff(&pinned.schema, &n.schema);
            if report.consumers() != Verdict::Compatible {
                let change = report.changes.iter().find(|c| c.consumers != Verdict::Compatible);
                problems.push((
                    "contract_version".to_owned(),
                    format!(
                        "pinned to {name} v{version}, but v{} {} its consumers ({}): declare a down_conversion (jq \
                         from v{} data to v{version}) or pin v{}",
                        n.version,
                        report.consumers(),
                        change.map(ToString::to_string).unwrap_or_default(),
                        n.version,
                        n.version
                    ),
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let newer = newer.iter().map(|c| c.dataschema.clone()).collect();
    Ok(Some(Pin { pinned, newer, down }))
}
