//! Operations on Nango's syncs: trigger a run (optionally a reset, optionally emptying
//! Nango's records cache first), start and pause their schedules, change a
//! connection's frequency.
//!
//! A trigger with [`TriggerOptions::empty_cache`] makes Nango hard-delete the sync's
//! records before it runs again: records that no longer exist upstream then never come
//! back as `DELETED`, so a local store must re-read its streams fully (with sweep).
//! [`Engine::trigger_syncs`](crate::Engine::trigger_syncs) does both. Nango applies
//! `emptyCache` only together with `reset`, so the client refuses `empty_cache` alone.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::NangoClient;
use super::request::{JsonCall, check_connection, check_name, from_body, to_body};
use crate::error::{Error, Result};

/// A sync of an integration, by name, with its variant (`base` when none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SyncRef {
    /// The sync's name.
    pub name: String,
    /// The variant, `None` for the base variant.
    pub variant: Option<String>,
}

impl SyncRef {
    /// The base variant of sync `name`.
    pub fn new(name: impl Into<String>) -> Self {
        SyncRef {
            name: name.into(),
            variant: None,
        }
    }

    /// The same sync, another variant (`base` or empty means none).
    pub fn with_variant(mut self, variant: impl Into<String>) -> Self {
        let v: String = variant.into();
        self.variant = (!v.is_empty() && v != "base").then_some(v);
        self
    }

    /// `name` or `name::variant` (Nango's own notation).
    pub fn parse(text: &str) -> Result<Self> {
        let sync = match text.split_once("::") {
            Some((name, variant)) => SyncRef::new(name).with_variant(variant),
            None => SyncRef::new(text),
        };
        sync.check()?;
        Ok(sync)
    }

    fn check(&self) -> Result<()> {
        check_name("sync name", &self.name)?;
        if let Some(v) = &self.variant {
            check_name("sync variant", v)?;
        }
        Ok(())
    }

    /// As sent in `syncs`: `name` or `name::variant`.
    fn wire(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}::{v}", self.name),
            None => self.name.clone(),
        }
    }
}

impl std::fmt::Display for SyncRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.wire())
    }
}

/// How [`NangoClient::trigger_syncs`] runs the syncs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TriggerOptions {
    /// A full run: Nango forgets the sync's last run date and checkpoints first.
    pub reset: bool,
    /// With `reset`: Nango deletes the sync's records (no `DELETED` is ever served for
    /// them) before the run.
    pub empty_cache: bool,
}

impl TriggerOptions {
    /// A reset (`reset`).
    pub fn reset() -> Self {
        TriggerOptions {
            reset: true,
            empty_cache: false,
        }
    }

    /// A reset that empties Nango's records cache first (`reset` + `emptyCache`).
    pub fn reset_and_empty_cache() -> Self {
        TriggerOptions {
            reset: true,
            empty_cache: true,
        }
    }
}

impl NangoClient {
    /// Run syncs of an integration now: of one connection, or (`connection: None`) of
    /// every connection. An empty `syncs` means every sync.
    ///
    /// Nango answers success even when a sync is already running (then nothing more
    /// runs). With a connection, the first unknown sync name fails with 400
    /// `no_syncs_found`, and the syncs listed before it were triggered already.
    pub async fn trigger_syncs(
        &self,
        integration: &str,
        connection: Option<&str>,
        syncs: &[SyncRef],
        options: TriggerOptions,
    ) -> Result<()> {
        if options.empty_cache && !options.reset {
            return Err(Error::invalid(
                "trigger options",
                "empty_cache takes effect only with reset (Nango ignores it otherwise)",
            ));
        }
        #[derive(Serialize)]
        struct Opts {
            reset: bool,
            #[serde(rename = "emptyCache")]
            empty_cache: bool,
        }
        let opts = (options.reset || options.empty_cache).then_some(Opts {
            reset: options.reset,
            empty_cache: options.empty_cache,
        });
        self.sync_command("trigger", integration, connection, syncs, opts)
            .await
    }

    /// Resume the schedules of syncs (`POST /sync/start`).
    pub async fn start_syncs(
        &self,
        integration: &str,
        connection: Option<&str>,
        syncs: &[SyncRef],
    ) -> Result<()> {
        self.sync_command("start", integration, connection, syncs, None::<()>)
            .await
    }

    /// Pause the schedules of syncs (`POST /sync/pause`); a run in progress goes on.
    pub async fn pause_syncs(
        &self,
        integration: &str,
        connection: Option<&str>,
        syncs: &[SyncRef],
    ) -> Result<()> {
        self.sync_command("pause", integration, connection, syncs, None::<()>)
            .await
    }

    async fn sync_command<O: Serialize>(
        &self,
        command: &str,
        integration: &str,
        connection: Option<&str>,
        syncs: &[SyncRef],
        opts: Option<O>,
    ) -> Result<()> {
        check_connection(integration, connection.unwrap_or("any"))?;
        for s in syncs {
            s.check()?;
        }
        if syncs.len() > 256 && command != "trigger" {
            return Err(Error::invalid(
                "syncs",
                format!("{} syncs given, Nango takes at most 256", syncs.len()),
            ));
        }
        #[derive(Serialize)]
        struct Body<'a, O> {
            syncs: Vec<String>,
            provider_config_key: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            connection_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            opts: Option<O>,
        }
        let body = Body {
            syncs: syncs.iter().map(SyncRef::wire).collect(),
            provider_config_key: integration,
            connection_id: connection,
            opts,
        };
        let names: Vec<String> = syncs.iter().map(SyncRef::wire).collect();
        let describe = format!(
            "POST /sync/{command} ({integration}/{}, syncs {})",
            connection.unwrap_or("*"),
            if names.is_empty() {
                "all".to_string()
            } else {
                names.join(",")
            }
        );
        self.json_call(JsonCall {
            method: Method::POST,
            url: self.api_url(&format!("/sync/{command}"))?,
            headers: self.auth_headers()?,
            body: Some(to_body("sync command", &body)?),
            describe,
            timeout: None,
            policy: &self.inner.retry,
            retry: Error::is_retryable,
        })
        .await?;
        Ok(())
    }

    /// Set how often a sync runs for one connection (`every 2h`, `30m`, `1d`, ...; at
    /// least 30 s), or `None` to go back to the sync's default. Returns the frequency
    /// Nango stored.
    pub async fn update_sync_frequency(
        &self,
        integration: &str,
        connection: &str,
        sync: &SyncRef,
        frequency: Option<&str>,
    ) -> Result<String> {
        check_connection(integration, connection)?;
        sync.check()?;
        #[derive(Serialize)]
        struct Body<'a> {
            sync_name: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            sync_variant: Option<&'a str>,
            provider_config_key: &'a str,
            connection_id: &'a str,
            frequency: Option<&'a str>,
        }
        #[derive(Deserialize)]
        struct Answer {
            frequency: String,
        }
        let describe = format!(
            "PUT /sync/update-connection-frequency ({integration}/{connection}, sync {sync})"
        );
        let answer = self
            .json_call(JsonCall {
                method: Method::PUT,
                url: self.api_url("/sync/update-connection-frequency")?,
                headers: self.auth_headers()?,
                body: Some(to_body(
                    "sync frequency",
                    &Body {
                        sync_name: &sync.name,
                        sync_variant: sync.variant.as_deref(),
                        provider_config_key: integration,
                        connection_id: connection,
                        frequency,
                    },
                )?),
                describe: describe.clone(),
                timeout: None,
                policy: &self.inner.retry,
                retry: Error::is_retryable,
            })
            .await?;
        from_body::<Answer>(&describe, &answer.body).map(|a| a.frequency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_names_parse_with_their_variant() {
        assert_eq!(SyncRef::parse("issues").unwrap(), SyncRef::new("issues"));
        assert_eq!(
            SyncRef::parse("issues::eu").unwrap(),
            SyncRef::new("issues").with_variant("eu")
        );
        assert_eq!(
            SyncRef::parse("issues::base").unwrap().to_string(),
            "issues"
        );
        assert!(SyncRef::parse("bad name").is_err());
        assert!(SyncRef::parse("issues::").is_ok_and(|s| s.variant.is_none()));
    }
}
