//! The open KV handles of directory buckets, shared by every directory operation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, kv};

use super::{DirectoryError, DirectoryKind};

/// Open KV handles by bucket, so a read costs one NATS round trip. Shared behind an `Arc`:
/// a handle carries the bucket's whole stream info, too much to copy per read.
#[derive(Default)]
pub struct Stores(Mutex<HashMap<String, Arc<kv::Store>>>);

impl Stores {
    /// The bucket's handle, opened on first use.
    ///
    /// # Errors
    /// `Unavailable` when the bucket cannot be opened (NATS's reason is logged, not answered).
    pub async fn get(
        &self,
        js: &jetstream::Context,
        bucket: &str,
        retry_after: u64,
    ) -> Result<Arc<kv::Store>, DirectoryError> {
        if let Some(store) = self.0.lock().ok().and_then(|m| m.get(bucket).cloned()) {
            return Ok(store);
        }
        let store = js.get_key_value(bucket).await.map_err(|err| {
            tracing::warn!(%bucket, %err, "directory bucket not opened");
            DirectoryError::new(
                DirectoryKind::Unavailable { retry_after },
                format!("directory {bucket} is unavailable"),
            )
        })?;
        let store = Arc::new(store);
        if let Ok(mut m) = self.0.lock() {
            m.insert(bucket.to_owned(), store.clone());
        }
        Ok(store)
    }
}
