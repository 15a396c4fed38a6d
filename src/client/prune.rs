//! Telling Nango that payloads may be dropped (`PATCH /records/prune`): every record of
//! a stream up to and including a cursor gets its payload emptied in Nango's cache
//! (`pruned_at` set; the record, its position and its counts stay).
//!
//! Only for a store that is the one consumer of the stream: once pruned, Nango serves
//! those records as `{id}` to everyone, a full re-read included, so a store rebuilt
//! from Nango ([`repair`](crate::repair)) gets back ids without payloads. nango-sync
//! never prunes unless asked ([`EngineConfig::prune_after_run`](crate::engine::EngineConfig::prune_after_run)).

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::NangoClient;
use super::request::{JsonCall, from_body, to_body};
use crate::error::{Error, Result};
use crate::record::{Cursor, StreamKey};

/// The largest `limit` of one prune request.
pub const MAX_PRUNE_LIMIT: u32 = 10_000;

/// What one prune request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PruneOutcome {
    /// Records pruned by this request.
    pub count: u64,
    /// Whether records up to the cursor are left to prune (send another request).
    pub has_more: bool,
}

impl NangoClient {
    /// Prune up to `limit` records of `stream` at or before `until_cursor` (one request).
    pub async fn prune_records(
        &self,
        stream: &StreamKey,
        until_cursor: &Cursor,
        limit: u32,
    ) -> Result<PruneOutcome> {
        stream.validate()?;
        if !(1..=MAX_PRUNE_LIMIT).contains(&limit) {
            return Err(Error::invalid(
                "prune limit",
                format!("{limit} is not between 1 and {MAX_PRUNE_LIMIT}"),
            ));
        }
        if until_cursor.as_str().is_empty() || until_cursor.as_str().len() > 1000 {
            return Err(Error::invalid(
                "cursor",
                "a cursor has 1 to 1000 characters",
            ));
        }
        #[derive(Serialize)]
        struct Body<'a> {
            model: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            variant: Option<&'a str>,
            until_cursor: &'a str,
            limit: u32,
        }
        let describe = format!("PATCH /records/prune ({stream})");
        let answer = self
            .json_call(JsonCall {
                method: Method::PATCH,
                url: self.api_url("/records/prune")?,
                headers: self.connection_headers(&stream.integration, &stream.connection)?,
                body: Some(to_body(
                    "prune",
                    &Body {
                        model: &stream.model,
                        variant: stream.variant_param(),
                        until_cursor: until_cursor.as_str(),
                        limit,
                    },
                )?),
                describe: describe.clone(),
                timeout: None,
                policy: &self.inner.retry,
                // Pruning twice prunes nothing more.
                retry: Error::is_retryable,
            })
            .await?;
        from_body(&describe, &answer.body)
    }

    /// Prune every record of `stream` at or before `until_cursor`, request after request
    /// while Nango says more are left. Returns how many were pruned.
    pub async fn prune_until(&self, stream: &StreamKey, until_cursor: &Cursor) -> Result<u64> {
        let mut total = 0;
        loop {
            let out = self
                .prune_records(stream, until_cursor, MAX_PRUNE_LIMIT)
                .await?;
            total += out.count;
            if !out.has_more {
                return Ok(total);
            }
        }
    }
}
