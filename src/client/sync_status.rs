//! `GET /sync/status`: the state of Nango's syncs of a connection, with the number of
//! records Nango holds per model (`recordCount`).
//!
//! What Nango's server does (checked against its source):
//!
//! - the query takes exactly `syncs` (`*`, or a comma list of `name` or
//!   `name::variant`), `provider_config_key` and an optional `connection_id`; an
//!   unknown sync name is skipped silently; without `connection_id` there is one entry
//!   per sync and connection of the integration;
//! - `recordCount` counts, per model of the sync, the records Nango holds that are not
//!   deleted, pruned ones included (a counter kept as `+added − deleted` on every write,
//!   decremented by hard deletes): what a store counts as live records;
//! - for a sync variant other than `base`, `recordCount` reports the **base variant's**
//!   count (Nango keys the counts by the base model name): it cannot be compared with a
//!   variant's records;
//! - the API key needs the `environment:syncs:read` scope (403 otherwise).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::NangoClient;
use crate::error::{Error, Result};
use crate::time::Timestamp;

/// Which syncs [`NangoClient::sync_status`] asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncSelector {
    /// Every sync (`syncs=*`).
    All,
    /// These syncs, each `name` or `name::variant`.
    Names(Vec<String>),
}

/// The state of a sync as Nango reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncState {
    /// A run is in progress.
    Running,
    /// Its schedule is paused.
    Paused,
    /// Its schedule was deleted.
    Stopped,
    /// The last run succeeded (or it never ran).
    Success,
    /// The last run failed (or was stopped).
    Error,
    /// A state this version does not know.
    Other(String),
}

impl SyncState {
    fn parse(s: &str) -> Self {
        match s {
            "RUNNING" => SyncState::Running,
            "PAUSED" => SyncState::Paused,
            "STOPPED" => SyncState::Stopped,
            "SUCCESS" => SyncState::Success,
            "ERROR" => SyncState::Error,
            other => SyncState::Other(other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for SyncState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(SyncState::parse(&String::deserialize(d)?))
    }
}

/// Added, updated and deleted counts of a sync's latest run, per model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct ModelResult {
    /// Records added.
    #[serde(default)]
    pub added: u64,
    /// Records updated.
    #[serde(default)]
    pub updated: u64,
    /// Records deleted.
    #[serde(default)]
    pub deleted: u64,
}

/// One sync of one connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SyncStatus {
    /// Nango's id of the sync.
    #[serde(default)]
    pub id: String,
    /// The connection.
    #[serde(rename = "connection_id", default)]
    pub connection_id: String,
    /// The sync's name.
    pub name: String,
    /// The sync variant (`base` when it has none).
    #[serde(default = "base")]
    pub variant: String,
    /// Running, paused, ...
    pub status: SyncState,
    /// When the last run finished (absent while a run is in progress, or before the
    /// first run).
    #[serde(default, deserialize_with = "timestamp")]
    pub finished_at: Option<Timestamp>,
    /// When the next run is scheduled.
    #[serde(default, deserialize_with = "timestamp")]
    pub next_scheduled_sync_at: Option<Timestamp>,
    /// The sync's frequency (`every 5m`, ...).
    #[serde(default)]
    pub frequency: Option<String>,
    /// The counts of the latest run, per model.
    #[serde(default)]
    pub latest_result: Option<BTreeMap<String, ModelResult>>,
    /// The state of the latest run (`RUNNING`, `SUCCESS`, `STOPPED`, ...).
    #[serde(default)]
    pub latest_execution_status: Option<String>,
    /// The records Nango holds, not deleted (pruned included), per model. For a sync
    /// variant other than `base`, Nango reports the base variant's count (it keys the
    /// counts by the base model name), so it cannot be compared with a variant's records.
    #[serde(default)]
    pub record_count: BTreeMap<String, u64>,
}

fn base() -> String {
    crate::record::StreamKey::BASE_VARIANT.to_string()
}

fn timestamp<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Timestamp>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => Timestamp::parse(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

impl SyncStatus {
    /// Whether a run of this sync is in progress.
    pub fn is_running(&self) -> bool {
        self.status == SyncState::Running
            || self.latest_execution_status.as_deref() == Some("RUNNING")
    }
}

#[derive(Deserialize)]
struct Body {
    syncs: Vec<SyncStatus>,
}

impl NangoClient {
    /// `GET /sync/status`: the syncs `syncs` of `integration` (of `connection`, or of
    /// every connection), with retries like every request. Needs the
    /// `environment:syncs:read` scope.
    pub async fn sync_status(
        &self,
        integration: &str,
        connection: Option<&str>,
        syncs: &SyncSelector,
    ) -> Result<Vec<SyncStatus>> {
        let syncs = match syncs {
            SyncSelector::All => "*".to_string(),
            SyncSelector::Names(names) if names.is_empty() => {
                return Err(Error::invalid("syncs", "name at least one sync, or all"));
            }
            SyncSelector::Names(names) => names.join(","),
        };
        let mut url = reqwest::Url::parse(&format!("{}/sync/status", self.inner.host))
            .map_err(|e| Error::invalid("host URL", e.to_string()))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("syncs", &syncs);
            q.append_pair("provider_config_key", integration);
            if let Some(c) = connection {
                q.append_pair("connection_id", c);
            }
        }
        let mut auth = reqwest::header::HeaderValue::from_str(&format!(
            "Bearer {}",
            self.inner.secret.expose()
        ))
        .map_err(|_| Error::invalid("secret key", "it cannot be sent in an HTTP header"))?;
        auth.set_sensitive(true);
        let describe = format!(
            "GET /sync/status ({integration}{}{}, syncs {syncs})",
            if connection.is_some() { "/" } else { "" },
            connection.unwrap_or("")
        );
        self.with_retries(&describe, || async {
            let resp = self
                .send(
                    &describe,
                    self.inner
                        .http
                        .get(url.clone())
                        .header(reqwest::header::AUTHORIZATION, auth.clone()),
                )
                .await?;
            let body = self.read_json_body(&describe, resp).await?;
            let body: Body = serde_json::from_slice(&body).map_err(|e| {
                Error::invalid("sync status", format!("{describe}: Nango's answer: {e}"))
            })?;
            Ok(body.syncs)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nango_answers_parse() {
        let body = r#"{"syncs":[{"id":"a1","connection_id":"acme","name":"tickets","variant":"base","type":"INCREMENTAL","status":"SUCCESS","finishedAt":"2026-08-21T10:00:00.123Z","nextScheduledSyncAt":null,"frequency":"every 5m","latestResult":{"Ticket":{"added":1,"updated":2,"deleted":0}},"latestExecutionStatus":"SUCCESS","recordCount":{"Ticket":42},"checkpoint":null},
            {"id":"a2","connection_id":"acme","name":"users","variant":"eu","status":"RUNNING","recordCount":{}}]}"#;
        let b: Body = serde_json::from_str(body).unwrap();
        assert_eq!(b.syncs[0].record_count["Ticket"], 42);
        assert_eq!(b.syncs[0].status, SyncState::Success);
        assert_eq!(
            b.syncs[0].finished_at,
            Some(Timestamp::parse("2026-08-21T10:00:00.123Z").unwrap())
        );
        assert!(b.syncs[1].is_running());
        assert_eq!(b.syncs[1].finished_at, None);
        assert_eq!(b.syncs[1].variant, "eu");
    }
}
