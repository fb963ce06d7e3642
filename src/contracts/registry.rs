//! Contracts registered over the API (`PUT /v1/contracts/{name}/{version}`) by participants
//! granted their names (`contracts = ["crm.*"]`): kept in a JetStream KV bucket that every
//! replica watches, so each one serves and enforces a new version as soon as it is stored.
//!
//! Contracts from files stay authoritative: a name declared in `[[contracts]]` cannot be
//! registered, and files win when an operator later declares a registered name. A registered
//! version binds the subjects its registration names (or those of the version before it),
//! each inside the registrant's own publish permissions, stored by a stream and governed by
//! no other contract; versions are immutable and numbered one after another, and each new
//! one passes the same compatibility check as `magistral check` against the one before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::compat::{self, Compatibility};
use super::{Contract, Origin, Violation};
use crate::catalog::Catalog;
use crate::participants::Participant;
use crate::problem::{Problem, ProblemType};
use crate::subject;

/// The bucket registered contracts live in; one key per version (`crm.lead.v2`).
pub const BUCKET: &str = "magistral_contracts";

/// Longest contract name: it is part of a KV key and of URLs.
const MAX_NAME: usize = 64;

/// How long a registration waits for this replica to apply it before answering anyway.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// A registered version, as stored under [`key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub name: String,
    pub version: u32,
    /// Subject patterns whose published data this version governs.
    pub subjects: Vec<String>,
    pub compatibility: Compatibility,
    /// The participant that registered it.
    pub registered_by: String,
    pub schema: Value,
}

impl Registered {
    /// # Errors
    /// The stored schema no longer compiles (a bucket edited by hand).
    pub fn compile(&self) -> Result<Contract, super::SchemaError> {
        let file = PathBuf::from(format!("nats:kv/{BUCKET}/{}", key(&self.name, self.version)));
        let mut contract =
            Contract::compile(self.name.clone(), self.version, file, self.subjects.clone(), self.schema.clone())?;
        contract.origin = Origin::Api { registered_by: self.registered_by.clone(), compatibility: self.compatibility };
        Ok(contract)
    }
}

/// The KV key of a version.
#[must_use]
pub fn key(name: &str, version: u32) -> String {
    format!("{name}.v{version}")
}

/// Whether `part` may begin a contract name: a-z, 0-9, `.`, `_`, `-`, starting with a letter
/// or digit (names are KV key parts and URL segments).
#[must_use]
pub fn valid_name_part(part: &str) -> bool {
    part.len() <= MAX_NAME
        && part.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && !part.contains("..")
}

/// What a participant asks to register.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub version: u32,
    pub schema: Value,
    /// `?subject=`: none means those of the version before.
    pub subjects: Vec<String>,
    /// `?compatibility=`: none means that of the version before, or `backward`.
    pub compatibility: Option<Compatibility>,
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterOutcome {
    /// Stored now.
    Created(Registered),
    /// The same version with the same content was already there (a retried request).
    Unchanged(Registered),
}

/// Checks a registration against the catalog: the name granted and not the files', the
/// version the next one, the subjects the registrant's to bind, the schema valid and
/// compatible with the version before. `Ok(None)` when the same version with the same
/// content is already registered.
///
/// # Errors
/// `forbidden`, `invalid-query`, `no-stream`, `contract-conflict`, `invalid-schema` or
/// `incompatible-contract`, each saying what to change.
pub fn admit(catalog: &Catalog, by: &Participant, r: Registration) -> Result<Option<Registered>, Problem> {
    let name = &r.name;
    if !valid_name_part(name) || name.ends_with('.') {
        return Err(Problem::new(
            ProblemType::InvalidQuery,
            format!("{name:?} is not a contract name: a-z, 0-9, '.', '_', '-', at most {MAX_NAME} characters"),
        ));
    }
    if r.version == 0 {
        return Err(Problem::new(ProblemType::InvalidQuery, "versions are numbered from 1"));
    }
    if !by.may_register(name) {
        return Err(Problem::new(
            ProblemType::Forbidden,
            format!(
                "{} may not register contract {name}: its `contracts` grants are {:?}; an operator grants names in its \
                 participant configuration",
                by.name, by.contracts
            ),
        ));
    }
    let versions: Vec<&Contract> = catalog.contracts.iter().filter(|c| c.name == *name).collect();
    if versions.iter().any(|c| c.origin == Origin::File) {
        return Err(Problem::new(
            ProblemType::ContractConflict,
            format!(
                "contract {name} is declared in the configuration files, which are authoritative: its versions \
                 change there, not over the API"
            ),
        ));
    }
    // Newest first (the catalog's order).
    let previous = versions.iter().find(|c| c.version < r.version).copied();
    if let Some(existing) = versions.iter().find(|c| c.version == r.version) {
        let same_subjects = r.subjects.is_empty() || r.subjects == existing.subjects;
        let same_mode = r.compatibility.is_none_or(|m| Some(m) == mode_of(existing));
        if existing.schema == r.schema && same_subjects && same_mode {
            return Ok(None);
        }
        return Err(Problem::new(
            ProblemType::ContractConflict,
            format!(
                "{name} v{} is already registered with other content, and versions do not change: register v{}",
                r.version,
                versions[0].version + 1
            ),
        ));
    }
    let next = versions.first().map_or(1, |c| c.version + 1);
    if r.version != next {
        return Err(Problem::new(
            ProblemType::ContractConflict,
            format!("the next version of {name} is v{next}, not v{}", r.version),
        ));
    }
    let subjects = if r.subjects.is_empty() {
        previous.map(|p| p.subjects.clone()).unwrap_or_default()
    } else {
        r.subjects.clone()
    };
    if subjects.is_empty() {
        return Err(Problem::new(
            ProblemType::InvalidQuery,
            format!("name the subjects {name} v1 governs: ?subject=<pattern> (repeatable)"),
        ));
    }
    check_subjects(catalog, by, name, &subjects)?;
    let compiled = Contract::compile(name.clone(), r.version, PathBuf::new(), subjects.clone(), r.schema.clone())
        .map_err(|e| Problem::new(ProblemType::InvalidSchema, format!("not a valid JSON Schema 2020-12: {e}")))?;
    let compatibility = r.compatibility.or_else(|| previous.and_then(mode_of)).unwrap_or_default();
    if let Some(previous) = previous {
        let report = compat::diff(&previous.schema, &compiled.schema);
        let broken: Vec<Violation> = report
            .violations(compatibility)
            .map(|c| Violation {
                instance_path: String::new(),
                schema_path: c.pointer.clone(),
                message: format!("producers {}, consumers {}: {}", c.producers, c.consumers, c.reason),
            })
            .collect();
        if !broken.is_empty() {
            return Err(Problem::new(
                ProblemType::IncompatibleContract,
                format!(
                    "{name} v{} breaks compatibility mode {compatibility} against v{}: {} change(s) listed in errors",
                    r.version,
                    previous.version,
                    broken.len()
                ),
            )
            .with_errors(broken));
        }
    }
    Ok(Some(Registered {
        name: name.clone(),
        version: r.version,
        subjects,
        compatibility,
        registered_by: by.name.clone(),
        schema: r.schema,
    }))
}

fn mode_of(c: &Contract) -> Option<Compatibility> {
    match &c.origin {
        Origin::Api { compatibility, .. } => Some(*compatibility),
        Origin::File => None,
    }
}

/// Each subject a valid pattern the registrant may publish to, stored by a stream, and
/// governed by no other contract.
fn check_subjects(catalog: &Catalog, by: &Participant, name: &str, subjects: &[String]) -> Result<(), Problem> {
    for pattern in subjects {
        if let Err(e) = subject::validate_pattern(pattern) {
            return Err(Problem::new(ProblemType::InvalidQuery, format!("subject {pattern:?}: {e}")));
        }
        if !by.publish.patterns().iter().any(|allowed| subject::covers(allowed, pattern)) {
            return Err(Problem::new(
                ProblemType::Forbidden,
                format!(
                    "{} may not publish to {pattern} (publish permissions {:?}), so it cannot bind a contract there",
                    by.name,
                    by.publish.patterns()
                ),
            ));
        }
        if !catalog.streams.iter().any(|s| s.config.subjects.iter().any(|sp| subject::covers(sp, pattern))) {
            return Err(Problem::new(ProblemType::NoStream, format!("no stream stores {pattern}")));
        }
        if let Some(other) =
            catalog.contracts.iter().find(|c| c.name != name && c.subjects.iter().any(|s| subject::overlap(s, pattern)))
        {
            return Err(Problem::new(
                ProblemType::ContractConflict,
                format!("{pattern} is already governed by contract {} v{}", other.name, other.version),
            ));
        }
    }
    Ok(())
}

/// The registered contracts this replica knows, kept in step with the bucket.
#[derive(Debug)]
pub struct Registry {
    contracts: ArcSwap<Vec<Arc<Contract>>>,
    /// Held while a catalog is composed and stored, so a reload and a registration arriving
    /// together cannot store a catalog missing the other's change.
    compose: Mutex<()>,
    /// The bucket revision applied last, for a registration to wait on.
    applied: tokio::sync::watch::Sender<u64>,
    /// The bucket, once opened.
    store: tokio::sync::OnceCell<kv::Store>,
    replicas: usize,
}

impl Registry {
    #[must_use]
    pub fn new(replicas: usize) -> Self {
        Self {
            contracts: ArcSwap::from_pointee(Vec::new()),
            compose: Mutex::new(()),
            applied: tokio::sync::watch::channel(0).0,
            store: tokio::sync::OnceCell::new(),
            replicas,
        }
    }

    /// Stores `files` (a catalog built from configuration) with the registered contracts in it.
    pub fn install(&self, slot: &ArcSwap<Catalog>, files: &Catalog) -> Arc<Catalog> {
        let _guard = self.compose.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let catalog = Arc::new(files.with_api_contracts(&self.contracts.load()));
        slot.store(catalog.clone());
        catalog
    }

    async fn bucket(&self, js: &jetstream::Context) -> Result<&kv::Store, Problem> {
        self.store
            .get_or_try_init(|| async {
                js.create_or_update_key_value(kv::Config {
                    bucket: BUCKET.to_owned(),
                    description: "magistral contracts registered over the API".to_owned(),
                    history: 1,
                    num_replicas: self.replicas,
                    ..Default::default()
                })
                .await
            })
            .await
            .map_err(|e| {
                Problem::new(ProblemType::NatsUnavailable, format!("the contract registry is unavailable: {e}"))
                    .retry_after(2)
            })
    }

    /// Admits and stores a registration, then waits (briefly) until this replica applies it,
    /// so the caller's next publish here is checked against it.
    ///
    /// # Errors
    /// The refusal of [`admit`], or NATS unavailable.
    pub async fn register(
        &self,
        js: &jetstream::Context,
        catalog: &Catalog,
        by: &Participant,
        r: Registration,
    ) -> Result<RegisterOutcome, Problem> {
        let (name, version) = (r.name.clone(), r.version);
        let Some(record) = admit(catalog, by, r)? else {
            return self.current(js, &name, version).await.map(RegisterOutcome::Unchanged);
        };
        let store = self.bucket(js).await?;
        let bytes = serde_json::to_vec(&record).map_err(|_| Problem::new(ProblemType::Internal, "internal error"))?;
        match store.create(key(&name, version), bytes.into()).await {
            Ok(revision) => {
                let mut applied = self.applied.subscribe();
                let _ = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|r| *r >= revision)).await;
                Ok(RegisterOutcome::Created(record))
            }
            // Another replica stored the same version first: the same content is a retry.
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let stored = self.current(js, &name, version).await?;
                if stored.schema == record.schema && stored.subjects == record.subjects {
                    Ok(RegisterOutcome::Unchanged(stored))
                } else {
                    Err(Problem::new(
                        ProblemType::ContractConflict,
                        format!("{name} v{version} was registered with other content at the same time"),
                    ))
                }
            }
            Err(e) => {
                Err(Problem::new(ProblemType::NatsUnavailable, format!("storing the contract: {e}")).retry_after(2))
            }
        }
    }

    async fn current(&self, js: &jetstream::Context, name: &str, version: u32) -> Result<Registered, Problem> {
        let store = self.bucket(js).await?;
        let unavailable = |e: String| Problem::new(ProblemType::NatsUnavailable, e).retry_after(2);
        let bytes = store.get(key(name, version)).await.map_err(|e| unavailable(e.to_string()))?;
        let bytes = bytes.ok_or_else(|| unavailable(format!("{name} v{version} is not in the registry yet")))?;
        serde_json::from_slice(&bytes).map_err(|_| Problem::new(ProblemType::Internal, "internal error"))
    }

    /// Follows the bucket until shutdown, composing each change into the catalog; reopens
    /// the watch when NATS drops it.
    pub async fn watch(&self, js: jetstream::Context, slot: Arc<ArcSwap<Catalog>>, shutdown: CancellationToken) {
        let mut delay = Duration::from_millis(200);
        loop {
            let watched = async {
                let store = self.bucket(&js).await.map_err(|p| p.detail)?;
                let mut watch = store.watch_with_history(">").await.map_err(|e| e.to_string())?;
                let mut held: BTreeMap<String, Arc<Contract>> = BTreeMap::new();
                while let Some(entry) = watch.next().await {
                    let entry = entry.map_err(|e| e.to_string())?;
                    self.apply(&entry, &mut held, &slot);
                }
                Ok::<(), String>(())
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                result = watched => if let Err(err) = result {
                    tracing::warn!(%err, "contract registry watch interrupted; reopening");
                },
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    fn apply(&self, entry: &kv::Entry, held: &mut BTreeMap<String, Arc<Contract>>, slot: &ArcSwap<Catalog>) {
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<Registered>(&entry.value).map_err(|e| e.to_string()) {
                Ok(record) => match record.compile() {
                    Ok(contract) => {
                        tracing::info!(contract = %record.name, version = record.version, by = %record.registered_by, "registered contract applied");
                        held.insert(entry.key.clone(), Arc::new(contract));
                    }
                    Err(err) => {
                        tracing::error!(key = %entry.key, %err, "registered contract does not compile; ignored")
                    }
                },
                Err(err) => tracing::error!(key = %entry.key, %err, "registered contract unreadable; ignored"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                held.remove(&entry.key);
            }
        }
        // While the history is replayed (a watch reopened), compose once it is caught up: the
        // catalog never lacks versions it had.
        if entry.delta > 0 {
            return;
        }
        {
            let _guard = self.compose.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let list: Vec<Arc<Contract>> = held.values().cloned().collect();
            slot.store(Arc::new(slot.load().with_api_contracts(&list)));
            self.contracts.store(Arc::new(list));
        }
        self.applied.send_replace(entry.revision);
    }
}

/// Writes every registered contract to `dir` in the `contracts/` layout: one schema file per
/// version (`crm.lead.v2.json`) and `registered.toml` with their `[[contracts]]` bindings, to
/// paste into `magistral.toml` (files then take over those names). Returns how many.
///
/// # Errors
/// NATS or the folder failed.
pub async fn export(js: &jetstream::Context, dir: &Path) -> Result<usize, String> {
    match js.get_stream(format!("KV_{BUCKET}")).await {
        Ok(_) => {}
        // No bucket: nothing was ever registered.
        Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return write_export(dir, &[]).map(|()| 0);
        }
        Err(e) => return Err(format!("opening {BUCKET}: {e}")),
    }
    let store = js.get_key_value(BUCKET).await.map_err(|e| format!("opening {BUCKET}: {e}"))?;
    let mut keys: Vec<String> =
        store.keys().await.map_err(|e| e.to_string())?.filter_map(|k| async move { k.ok() }).collect().await;
    keys.sort();
    let mut records = Vec::new();
    for key in keys {
        if let Some(bytes) = store.get(&key).await.map_err(|e| e.to_string())? {
            records.push(serde_json::from_slice::<Registered>(&bytes).map_err(|e| format!("{key}: {e}"))?);
        }
    }
    records.sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
    write_export(dir, &records)?;
    Ok(records.len())
}

fn write_export(dir: &Path, records: &[Registered]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut toml = String::from(
        "# Contracts registered over the API, exported by `magistral contracts export`.\n\
         # Paste into magistral.toml (files are authoritative from then on).\n",
    );
    for r in records {
        let file = format!("{}.json", key(&r.name, r.version));
        let mut bytes = serde_json::to_vec_pretty(&r.schema).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        std::fs::write(dir.join(&file), bytes).map_err(|e| format!("{}: {e}", dir.join(&file).display()))?;
        let subjects: Vec<String> = r.subjects.iter().map(|s| format!("{s:?}")).collect();
        toml.push_str(&format!(
            "\n# registered by {}\n[[contracts]]\nname = {:?}\nversion = {}\nfile = {file:?}\nsubjects = [{}]\ncompatibility = \"{}\"\n",
            r.registered_by,
            r.name,
            r.version,
            subjects.join(", "),
            r.compatibility
        ));
    }
    std::fs::write(dir.join("registered.toml"), toml).map_err(|e| format!("{}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::valid_name_part;

    #[test]
    fn names_are_key_and_url_safe() {
        assert!(valid_name_part("crm.lead"));
        assert!(valid_name_part("sales-order_2"));
        assert!(!valid_name_part("CRM"));
        assert!(!valid_name_part(".lead"));
        assert!(!valid_name_part("a..b"));
        assert!(!valid_name_part("a/b"));
        assert!(!valid_name_part(&"a".repeat(65)));
    }
}
