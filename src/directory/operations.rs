//! Reading and writing directories for a caller: [`open`] checks the caller may use the
//! directory, then [`get`], [`put`], [`delete`] and [`list`] work on it.
//!
//! Writes go to the bucket's subject (`$KV.<bucket>.<key>`) directly rather than through the
//! KV API, so they carry CloudEvents headers (`ce-source` is the caller) and subscribers to
//! `$KV.<bucket>.>` see who changed what.

use std::time::SystemTime;

use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use bytes::Bytes;
use futures::TryStreamExt;

use super::{Directory, DirectoryError, DirectoryKind, Key, Stores};
use crate::catalog::Catalog;
use crate::config::Limits;
use crate::contracts::Contract;
use crate::participants::Participant;
use crate::publish::cloudevents::StoredAttributes;

/// What directory operations need from the running gateway.
pub(crate) struct Directories<'a> {
    pub client: &'a async_nats::Client,
    pub js: &'a jetstream::Context,
    pub stores: &'a Stores,
    pub limits: &'a Limits,
}

/// What the caller means to do with a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// A directory its caller may use as asked (see [`open`]).
pub(crate) struct Book<'c> {
    catalog: &'c Catalog,
    directory: &'c Directory,
    caller: &'c Participant,
}

/// A key's current value.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub value: Bytes,
    pub revision: u64,
    /// When this revision was written.
    pub modified: SystemTime,
}

/// A stored write or delete.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Written {
    /// The key's new revision (the bucket stream's sequence).
    pub revision: u64,
}

/// When a write may happen.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Precondition {
    /// Only if the key is still at this revision (compare-and-set).
    pub revision: Option<u64>,
    /// Only if the key does not exist (a deleted key may be created again).
    pub create_only: bool,
}

/// The caller's trace context, carried into the stored change.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Trace<'a> {
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

/// Which keys to list.
#[derive(Debug, Clone, Default)]
pub(crate) struct Paging {
    pub prefix: String,
    /// Keys per page: 100 unless asked, between 1 and 1000.
    pub limit: Option<usize>,
    /// The `next` of the previous page: keys after it.
    pub cursor: Option<String>,
}

/// One page of keys, in order.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub keys: Vec<String>,
    /// The cursor of the next page; `None` on the last.
    pub next: Option<String>,
}

/// The directory `bucket`, if `caller` may use it as asked (its owner may do anything).
///
/// # Errors
/// `NotFound` for an unknown directory; `Forbidden` without the permission.
pub(crate) fn open<'c>(
    catalog: &'c Catalog,
    caller: &'c Participant,
    bucket: &str,
    access: Access,
) -> Result<Book<'c>, DirectoryError> {
    let directory = catalog
        .directory(bucket)
        .ok_or_else(|| DirectoryError::new(DirectoryKind::NotFound, format!("no directory {bucket}")))?;
    let allowed = directory.owner == caller.name
        || match access {
            Access::Read => caller.may_read(bucket),
            Access::Write => caller.may_write(bucket),
        };
    if !allowed {
        let verb = if access == Access::Read { "read" } else { "write" };
        return Err(DirectoryError::new(
            DirectoryKind::Forbidden,
            format!("participant {} may not {verb} directory {bucket}", caller.name),
        ));
    }
    Ok(Book { catalog, directory, caller })
}

/// The key's current value.
///
/// # Errors
/// `NotFound` when the key holds no value (never written, or deleted); `Unavailable`.
pub(crate) async fn get(ctx: &Directories<'_>, book: &Book<'_>, key: &Key) -> Result<Entry, DirectoryError> {
    match current(ctx, book, key).await? {
        Some(entry) if entry.operation == kv::Operation::Put => {
            Ok(Entry { value: entry.value, revision: entry.revision, modified: entry.created.into() })
        }
        _ => Err(no_key(book, key)),
    }
}

/// Writes `value` under `key`, checked like published data (and against the directory's
/// contract, if it has one).
///
/// # Errors
/// `Refused` by the data check; `RevisionMismatch` when the precondition fails; `Timeout`;
/// `Unavailable`; `Internal` when the directory's contract is not loaded.
pub(crate) async fn put(
    ctx: &Directories<'_>,
    book: &Book<'_>,
    key: &Key,
    value: Bytes,
    precondition: Precondition,
    trace: Trace<'_>,
) -> Result<Written, DirectoryError> {
    let contract = contract(book)?;
    crate::publish::check_data(ctx.limits, contract, &value).map_err(|problem| {
        let detail = problem.detail.clone();
        DirectoryError::new(DirectoryKind::Refused(Box::new(problem)), detail)
    })?;
    let dataschema = contract.map(|c| c.dataschema.as_str());
    let headers = change_headers(book, key, "put", dataschema, trace);
    let expected = expected_revision(ctx, book, key, precondition).await?;
    write(ctx, book, key, headers, expected, value).await
}

/// Deletes the key's value (a delete marker, pushed to subscribers like any change).
///
/// # Errors
/// `NotFound` when the key holds no value; `RevisionMismatch` when `expected` is not its
/// revision; `Timeout`; `Unavailable`.
pub(crate) async fn delete(
    ctx: &Directories<'_>,
    book: &Book<'_>,
    key: &Key,
    expected: Option<u64>,
    trace: Trace<'_>,
) -> Result<Written, DirectoryError> {
    // Deleting what is not there is a 404, not a marker pushed to every subscriber.
    if !current(ctx, book, key).await?.is_some_and(|e| e.operation == kv::Operation::Put) {
        return Err(no_key(book, key));
    }
    let mut headers = change_headers(book, key, "delete", None, trace);
    headers.insert("KV-Operation", "DEL");
    write(ctx, book, key, headers, expected, Bytes::new()).await
}

/// The directory's keys starting with `paging.prefix`, in order, a page at a time.
///
/// # Errors
/// `Unavailable`.
pub(crate) async fn list(ctx: &Directories<'_>, book: &Book<'_>, paging: &Paging) -> Result<Page, DirectoryError> {
    let limit = paging.limit.unwrap_or(100).clamp(1, 1000);
    let store = store(ctx, book).await?;
    let unavailable = |err: &dyn std::fmt::Display| unavailable(ctx, book, "listed", err);
    let mut keys: Vec<String> = store
        .keys()
        .await
        .map_err(|e| unavailable(&e))?
        .try_filter(|k| futures::future::ready(k.starts_with(&paging.prefix)))
        .try_collect()
        .await
        .map_err(|e| unavailable(&e))?;
    keys.sort_unstable();
    let start = paging.cursor.as_ref().map_or(0, |c| keys.partition_point(|k| k <= c));
    let page: Vec<String> = keys.iter().skip(start).take(limit).cloned().collect();
    let next = (start + page.len() < keys.len()).then(|| page.last().cloned()).flatten();
    Ok(Page { keys: page, next })
}

async fn store(ctx: &Directories<'_>, book: &Book<'_>) -> Result<std::sync::Arc<kv::Store>, DirectoryError> {
    ctx.stores.get(ctx.js, &book.directory.bucket, ctx.limits.retry_after_seconds).await
}

/// The key's latest entry (a value or a delete marker), if any.
async fn current(ctx: &Directories<'_>, book: &Book<'_>, key: &Key) -> Result<Option<kv::Entry>, DirectoryError> {
    let store = store(ctx, book).await?;
    store.entry(key.as_str()).await.map_err(|e| unavailable(ctx, book, "read", &e))
}

/// NATS failed: its reason is logged; the caller is told only that the directory is unavailable.
fn unavailable(ctx: &Directories<'_>, book: &Book<'_>, what: &str, err: &dyn std::fmt::Display) -> DirectoryError {
    let bucket = &book.directory.bucket;
    tracing::warn!(%bucket, %err, "directory not {what}");
    DirectoryError::new(
        DirectoryKind::Unavailable { retry_after: ctx.limits.retry_after_seconds },
        format!("directory {bucket} could not be {what}"),
    )
}

fn no_key(book: &Book<'_>, key: &Key) -> DirectoryError {
    DirectoryError::new(DirectoryKind::NotFound, format!("no key {key} in {}", book.directory.bucket))
}

/// The contract the directory's values honour, if it has one.
fn contract<'c>(book: &Book<'c>) -> Result<Option<&'c Contract>, DirectoryError> {
    let Some((name, version)) = &book.directory.contract else { return Ok(None) };
    let contract = book
        .catalog
        .contracts
        .get(name, *version)
        .ok_or_else(|| DirectoryError::new(DirectoryKind::Internal, "the directory's contract is not loaded"))?;
    Ok(Some(contract))
}

/// The CloudEvents headers of a change: `ce-type` `magistral.directory.<bucket>.<operation>`,
/// `ce-subject` the key, `ce-source` the caller.
fn change_headers(
    book: &Book<'_>,
    key: &Key,
    operation: &str,
    dataschema: Option<&str>,
    trace: Trace<'_>,
) -> async_nats::HeaderMap {
    let id = uuid::Uuid::now_v7().to_string();
    let type_ = format!("magistral.directory.{}.{operation}", book.directory.bucket);
    StoredAttributes {
        id: &id,
        source: &book.caller.source,
        type_: &type_,
        subject: Some(key.as_str()),
        dataschema,
        time: None,
        extensions: &Default::default(),
        traceparent: trace.traceparent,
        tracestate: trace.tracestate,
    }
    .to_nats_headers()
}

/// The revision the key must be at for the write to happen, if any.
async fn expected_revision(
    ctx: &Directories<'_>,
    book: &Book<'_>,
    key: &Key,
    precondition: Precondition,
) -> Result<Option<u64>, DirectoryError> {
    let expected = precondition.revision.or(precondition.create_only.then_some(0));
    if precondition.create_only && expected == Some(0) {
        // A deleted key may be created again: expect its delete marker (as KV `create` does).
        let store = store(ctx, book).await?;
        if let Ok(Some(entry)) = store.entry(key.as_str()).await
            && entry.operation != kv::Operation::Put
        {
            return Ok(Some(entry.revision));
        }
    }
    Ok(expected)
}

/// Writes a KV message (`$KV.<bucket>.<key>`) directly, so it can carry CloudEvents headers;
/// `expected` makes it compare-and-set.
async fn write(
    ctx: &Directories<'_>,
    book: &Book<'_>,
    key: &Key,
    mut headers: async_nats::HeaderMap,
    expected: Option<u64>,
    value: Bytes,
) -> Result<Written, DirectoryError> {
    let retry_after = ctx.limits.retry_after_seconds;
    if ctx.client.connection_state() != async_nats::connection::State::Connected {
        return Err(DirectoryError::new(DirectoryKind::Unavailable { retry_after }, "not connected to NATS"));
    }
    if let Some(revision) = expected {
        headers.insert("Nats-Expected-Last-Subject-Sequence", revision.to_string().as_str());
    }
    let bucket = &book.directory.bucket;
    let refused = |kind: PublishErrorKind, err: &dyn std::fmt::Display| match kind {
        PublishErrorKind::WrongLastSequence => DirectoryError::new(
            DirectoryKind::RevisionMismatch,
            "the key changed since that revision (or already exists); read it again",
        ),
        PublishErrorKind::TimedOut => {
            DirectoryError::new(DirectoryKind::Timeout, "JetStream did not confirm the write in time")
        }
        _ => {
            tracing::warn!(%bucket, %err, "directory write not stored");
            DirectoryError::new(DirectoryKind::Unavailable { retry_after }, "the directory write was not stored")
        }
    };
    let ack = ctx
        .js
        .publish_with_headers(format!("$KV.{bucket}.{key}"), headers, value)
        .await
        .map_err(|e| refused(e.kind(), &e))?
        .await
        .map_err(|e| refused(e.kind(), &e))?;
    Ok(Written { revision: ack.sequence })
}
