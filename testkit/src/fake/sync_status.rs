//! `GET /sync/status` of the fake: the syncs a test defined
//! ([`FakeNango::define_sync`]), with `recordCount` computed as Nango's server does.
//!
//! What is faithful (Nango's `getSyncStatus.ts` and `manager.service.ts`):
//!
//! - the query is strict: `syncs` (required: `*` or a comma list of `name` or
//!   `name::variant`; a repeated `syncs` is an array and refused), `provider_config_key`
//!   (required), `connection_id` (optional); any other key → 400
//!   `invalid_query_params`;
//! - an unknown `connection_id` → 400 `{"error":{"code":"invalid_body","message":"Connection not found"}}`;
//!   unknown sync names are skipped; without `connection_id`, one entry per sync and
//!   connection of the integration;
//! - `recordCount` is, per model of the sync, the number of records that are not
//!   deleted, pruned ones included; hard resets lower it; and for a variant other than
//!   `base` it is the **base variant's** count (Nango keys counts by the base model).
//!
//! What is simplified: `status` is `SUCCESS` (`PAUSED` once `POST /sync/pause` paused
//! it) and `finishedAt` the time of the latest write to the sync's models of that
//! connection (the run that wrote them), unless a test sets them
//! ([`FakeNango::set_sync_state`]); `frequency` is the one `PUT
//! /sync/update-connection-frequency` set (as Nango stores it: `2h` for `every 2h`), else the
//! configuration's `every day`; `type` is `INCREMENTAL`,
//! `nextScheduledSyncAt`, `latestResult` and `checkpoint` are `null`.

use std::collections::BTreeMap;

use axum::response::Response;
use serde_json::json;

use super::http::json_response;
use super::query::{Issue, parse_pairs};
use super::{FakeNango, Shared};
use nango_sync::record::StreamKey;
use nango_sync::time::Timestamp;

/// What a test made `GET /sync/status` report for one sync of one connection:
/// (integration, name, variant, connection) → (`status`, `finishedAt`).
pub(crate) type SyncStates =
    BTreeMap<(String, String, String, String), (String, Option<Timestamp>)>;

/// `name` or `name::variant` as (name, variant).
fn split_sync(sync: &str) -> (&str, &str) {
    sync.split_once("::")
        .unwrap_or((sync, StreamKey::BASE_VARIANT))
}

impl FakeNango {
    /// Define a sync of `integration` named `sync` (`name`, or `name::variant` for a
    /// variant) that writes `models`, for every connection of the integration: `GET
    /// /sync/status` reports it, and the sync operations (trigger, start, pause,
    /// frequency) accept it. Defining it again replaces its models.
    pub fn define_sync(&self, integration: &str, sync: &str, models: &[&str]) {
        let (name, variant) = split_sync(sync);
        let models: Vec<String> = models.iter().map(|m| m.to_string()).collect();
        super::writeback::add_sync(&self.shared, integration, name, Some(variant), &models);
    }

    /// Make `GET /sync/status` report sync `sync` (as given to
    /// [`FakeNango::define_sync`]) of `connection` with this `status` (`RUNNING`,
    /// `SUCCESS`, `ERROR`, ...) and `finishedAt` (`None`: absent).
    pub fn set_sync_state(
        &self,
        integration: &str,
        connection: &str,
        sync: &str,
        status: &str,
        finished_at: Option<Timestamp>,
    ) {
        let (name, variant) = split_sync(sync);
        self.shared
            .sync_states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (
                    integration.to_string(),
                    name.to_string(),
                    variant.to_string(),
                    connection.to_string(),
                ),
                (status.to_string(), finished_at),
            );
    }
}

fn query_issue(code: &'static str, message: &str, path: &[&str]) -> Response {
    let issue = Issue {
        code,
        message: message.to_string(),
        path: path.iter().map(|p| p.to_string()).collect(),
    };
    json_response(
        400,
        json!({"error": {"code": "invalid_query_params", "errors": [issue.to_json()]}}).to_string(),
    )
}

/// Answer `GET /sync/status` (after the auth check).
pub(crate) fn respond(shared: &Shared, raw_query: &str) -> Response {
    let pairs = parse_pairs(raw_query);
    let mut syncs_param = None;
    let mut integration = None;
    let mut connection = None;
    for (key, values) in &pairs {
        let slot = match key.as_str() {
            "syncs" => &mut syncs_param,
            "provider_config_key" => &mut integration,
            "connection_id" => &mut connection,
            other => {
                return query_issue(
                    "unrecognized_keys",
                    &format!("Unrecognized key: \"{other}\""),
                    &[],
                );
            }
        };
        if values.len() > 1 {
            return query_issue(
                "invalid_type",
                "Invalid input: expected string, received array",
                &[key.as_str()],
            );
        }
        *slot = values.first().cloned();
    }
    let Some(syncs_param) = syncs_param else {
        return query_issue(
            "invalid_type",
            "Invalid input: expected string, received undefined",
            &["syncs"],
        );
    };
    let Some(integration) = integration else {
        return query_issue(
            "invalid_type",
            "Invalid input: expected string, received undefined",
            &["provider_config_key"],
        );
    };
    let st = shared.state.read().unwrap_or_else(|e| e.into_inner());
    let connections: Vec<String> = match &connection {
        Some(c) => {
            if !st
                .connections
                .contains_key(&(integration.clone(), c.clone()))
            {
                return json_response(
                    400,
                    json!({"error": {"code": "invalid_body", "message": "Connection not found"}})
                        .to_string(),
                );
            }
            vec![c.clone()]
        }
        None => st
            .connections
            .keys()
            .filter(|(i, _)| *i == integration)
            .map(|(_, c)| c.clone())
            .collect(),
    };
    let wanted: Option<Vec<(String, String)>> = (syncs_param != "*").then(|| {
        syncs_param
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (n, v) = s.split_once("::").unwrap_or((s, StreamKey::BASE_VARIANT));
                (n.to_string(), v.to_string())
            })
            .collect()
    });
    let states = shared
        .sync_states
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut out = Vec::new();
    for (name, variant, models) in super::writeback::declared_syncs(shared, &integration) {
        if let Some(w) = &wanted
            && !w.iter().any(|(n, v)| *n == name && *v == variant)
        {
            continue;
        }
        for conn in &connections {
            let mut record_count = serde_json::Map::new();
            let mut last_write: Option<Timestamp> = None;
            for model in &models {
                // Nango keys its counts by the base model: a variant reports the base's.
                let base = StreamKey::new(&integration, conn, model.as_str());
                let live = st.streams.get(&base).map_or(0, |s| s.live_count());
                record_count.insert(model.clone(), json!(live));
                let own = base.clone().with_variant(&variant);
                if let Some(t) = st
                    .streams
                    .get(&own)
                    .and_then(|s| s.records().map(|r| r.last_modified_at()).max())
                {
                    last_write = Some(last_write.map_or(t, |w| w.max(t)));
                }
            }
            let schedule =
                super::writeback::schedule_of(shared, &integration, conn, &name, &variant);
            let key = (
                integration.clone(),
                name.clone(),
                variant.clone(),
                conn.clone(),
            );
            let (status, finished_at) = match states.get(&key) {
                Some((status, finished)) => (status.clone(), *finished),
                None if schedule.paused => ("PAUSED".to_string(), last_write),
                None => ("SUCCESS".to_string(), last_write),
            };
            let mut entry = json!({
                "id": uuid::Uuid::new_v5(
                    &uuid::Uuid::NAMESPACE_OID,
                    format!("{integration}/{conn}/{name}::{variant}").as_bytes()
                )
                .to_string(),
                "connection_id": conn,
                "name": name,
                "variant": variant,
                "type": "INCREMENTAL",
                "status": status,
                "nextScheduledSyncAt": null,
                "frequency": schedule
                    .frequency
                    .as_deref()
                    .unwrap_or(super::writeback::DEFAULT_RUNS),
                "latestExecutionStatus": status,
                "recordCount": record_count,
                "checkpoint": null,
            });
            if let Some(t) = finished_at {
                entry["finishedAt"] = json!(t.to_utc_z());
            }
            out.push(entry);
        }
    }
    json_response(200, json!({ "syncs": out }).to_string())
}
