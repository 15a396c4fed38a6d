//! Listing connections (`GET /connections`): one page at a time
//! ([`NangoClient::list_connections`]) or every page ([`NangoClient::all_connections`]).
//!
//! Nango pages with `limit` (1 to 2,000) and `page` (an offset of `page × limit`), newest
//! first, and says nothing about what follows: the last page is the first one shorter
//! than `limit`. Offset paging over a set that changes meanwhile can skip or repeat a
//! connection; `all_connections` drops repeats.

use std::collections::{BTreeMap, HashSet};

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::NangoClient;
use super::request::{JsonCall, from_body};
use crate::error::{Error, Result};
use crate::time::Timestamp;

/// The largest page of connections Nango serves.
pub const MAX_CONNECTIONS_PAGE: u32 = 2000;

/// Which connections to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionsQuery {
    /// Only these integrations (`integrationId`, a comma list).
    pub integrations: Vec<String>,
    /// Only this connection id (`connectionId`).
    pub connection_id: Option<String>,
    /// Connections whose id, end user name or email contain this (`search`).
    pub search: Option<String>,
    /// Only this end user (`endUserId`).
    pub end_user_id: Option<String>,
    /// Only this end user organization (`endUserOrganizationId`).
    pub end_user_organization_id: Option<String>,
    /// Only connections with these tags (`tags[key]=value`; keys are lower-cased).
    pub tags: BTreeMap<String, String>,
    /// Page size (1 to 2,000; Nango's default without it is 10,000).
    pub limit: Option<u32>,
    /// The page (0 is the first).
    pub page: Option<u32>,
}

impl ConnectionsQuery {
    /// Every connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only the connections of `integration`.
    pub fn integration(mut self, integration: impl Into<String>) -> Self {
        self.integrations.push(integration.into());
        self
    }

    /// Pages of `limit` connections.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Page `page` (0 is the first).
    pub fn page(mut self, page: u32) -> Self {
        self.page = Some(page);
        self
    }
}

/// One connection, as `GET /connections` describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Connection {
    /// Nango's internal id.
    pub id: i64,
    /// The connection id.
    pub connection_id: String,
    /// The integration id.
    pub provider_config_key: String,
    /// The provider (for example `github`).
    pub provider: String,
    /// Errors Nango holds for the connection (`{type, log_id}`).
    #[serde(default)]
    pub errors: Vec<serde_json::Value>,
    /// The end user, when one is set.
    #[serde(default)]
    pub end_user: Option<serde_json::Value>,
    /// Tags.
    #[serde(default)]
    pub tags: serde_json::Map<String, serde_json::Value>,
    /// Metadata.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// When the connection was created, as Nango wrote it (`2026-01-02T03:04:05.123456+00:00`).
    pub created: String,
}

impl Connection {
    /// [`Connection::created`] as an instant, when it parses.
    pub fn created_at(&self) -> Option<Timestamp> {
        Timestamp::parse(&self.created).ok()
    }
}

impl NangoClient {
    /// One page of connections.
    pub async fn list_connections(&self, query: &ConnectionsQuery) -> Result<Vec<Connection>> {
        if let Some(limit) = query.limit
            && !(1..=MAX_CONNECTIONS_PAGE).contains(&limit)
        {
            return Err(Error::invalid(
                "connections page size",
                format!("{limit} is not between 1 and {MAX_CONNECTIONS_PAGE}"),
            ));
        }
        let mut url = self.api_url("/connections")?;
        {
            let mut pairs = url.query_pairs_mut();
            if !query.integrations.is_empty() {
                pairs.append_pair("integrationId", &query.integrations.join(","));
            }
            let optional = [
                ("connectionId", &query.connection_id),
                ("search", &query.search),
                ("endUserId", &query.end_user_id),
                ("endUserOrganizationId", &query.end_user_organization_id),
            ];
            for (k, v) in optional {
                if let Some(v) = v {
                    pairs.append_pair(k, v);
                }
            }
            for (k, v) in &query.tags {
                pairs.append_pair(&format!("tags[{}]", k.to_lowercase()), v);
            }
            if let Some(limit) = query.limit {
                pairs.append_pair("limit", &limit.to_string());
            }
            if let Some(page) = query.page {
                pairs.append_pair("page", &page.to_string());
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        #[derive(Deserialize)]
        struct Answer {
            connections: Vec<Connection>,
        }
        let describe = format!(
            "GET /connections (page {}{})",
            query.page.unwrap_or(0),
            if query.integrations.is_empty() {
                String::new()
            } else {
                format!(", integrations {}", query.integrations.join(","))
            }
        );
        let answer = self
            .json_call(JsonCall {
                method: Method::GET,
                url,
                headers: self.auth_headers()?,
                body: None,
                describe: describe.clone(),
                timeout: None,
                policy: &self.inner.retry,
                retry: Error::is_retryable,
            })
            .await?;
        from_body::<Answer>(&describe, &answer.body).map(|a| a.connections)
    }

    /// Every connection `query` selects, page after page of `query.limit` (1,000 when
    /// not set), from `query.page` on; a connection seen twice is kept once.
    pub async fn all_connections(&self, query: &ConnectionsQuery) -> Result<Vec<Connection>> {
        let mut q = query.clone();
        let limit = q.limit.unwrap_or(1000);
        q.limit = Some(limit);
        let mut page = q.page.unwrap_or(0);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        loop {
            q.page = Some(page);
            let batch = self.list_connections(&q).await?;
            let short = (batch.len() as u64) < u64::from(limit);
            for c in batch {
                if seen.insert(c.id) {
                    out.push(c);
                }
            }
            if short {
                return Ok(out);
            }
            page += 1;
        }
    }
}
