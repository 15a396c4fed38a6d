//! What `serve` shows of its streams: the Prometheus recorder behind `GET /metrics`
//! (metrics-exporter-prometheus renders the exposition format), and the health checks
//! behind `GET /health`, computed at most every two seconds (a scrape and a probe in
//! the same instant read the store once), which also refresh the lag gauges; each scrape
//! also sets the outbox's items per state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use nango_sync::engine::scheduler::Scheduler;
use nango_sync::monitor::{HealthConfig, StreamHealth};

/// How long a health check is reused.
const HEALTH_TTL: Duration = Duration::from_secs(2);

/// The recorder's handle and the last health check.
#[derive(Clone)]
pub struct Monitor {
    handle: PrometheusHandle,
    config: HealthConfig,
    last: Arc<tokio::sync::Mutex<Option<Checked>>>,
}

/// A health check and when it was made.
type Checked = (Instant, Arc<Vec<StreamHealth>>);

impl Monitor {
    /// Install the process's Prometheus recorder and describe nango-sync's metrics.
    pub fn install() -> Result<Self> {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .context("cannot install the metrics recorder")?;
        nango_sync::monitor::metrics::describe();
        Ok(Monitor {
            handle,
            config: HealthConfig::default(),
            last: Arc::default(),
        })
    }

    /// The health of the scheduler's streams (at most [`HEALTH_TTL`] old); an error
    /// when the store cannot be read.
    pub async fn health(
        &self,
        scheduler: &Scheduler,
    ) -> nango_sync::Result<Arc<Vec<StreamHealth>>> {
        let mut last = self.last.lock().await;
        if let Some((at, health)) = &*last
            && at.elapsed() < HEALTH_TTL
        {
            return Ok(health.clone());
        }
        let health = Arc::new(scheduler.health(&self.config).await?);
        *last = Some((Instant::now(), health.clone()));
        Ok(health)
    }

    /// `GET /metrics`: refresh the gauges from a health check, then render.
    pub async fn metrics(&self, scheduler: &Scheduler) -> Response {
        // A store that cannot be read leaves the gauges as they were; /health says why.
        let _ = self.health(scheduler).await;
        if let Ok(counts) = scheduler.engine().sink().outbox_counts().await {
            nango_sync::monitor::metrics::record_outbox_counts(&counts);
        }
        (
            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            self.handle.render(),
        )
            .into_response()
    }
}
