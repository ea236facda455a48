//! The drift service's own HTTP routes: `/api/reports` (recent reports, retrain requests, thresholds,
//! open windows and the mute, as JSON) and `/dashboard`, a self-contained page (inline JS and SVG, no
//! CDN) that polls it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sentiflow_common::events::{DriftReport, ModelRef, RetrainRequest};
use serde::Serialize;

use crate::config::Threshold;
use crate::control::{Control, Mute};

/// The dashboard page, served as is.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// Recent history shown by `/api/reports` and `/dashboard`.
#[derive(Clone, Debug)]
pub struct Board {
    inner: Arc<Mutex<BoardState>>,
}

#[derive(Debug)]
struct BoardState {
    /// Most reports kept.
    capacity: usize,
    /// Reports, oldest first.
    reports: VecDeque<DriftReport>,
    /// Retrain requests seen on the topic, oldest first.
    requests: VecDeque<RetrainRequest>,
    /// Thresholds in force per signal.
    thresholds: BTreeMap<&'static str, Threshold>,
    /// Open windows: model, events so far, whether its reference is ready.
    open: Vec<(ModelRef, u64, bool)>,
    /// Operator mute as of the last report.
    last_mute: Option<Mute>,
}

#[derive(Serialize)]
struct ThresholdJson {
    warn: f64,
    drift: f64,
}

#[derive(Serialize)]
struct OpenWindowJson {
    model: ModelRef,
    events: u64,
    reference_ready: bool,
}

/// The body of `/api/reports`.
#[derive(Serialize)]
struct ReportsJson {
    generated_at: chrono::DateTime<chrono::Utc>,
    thresholds: BTreeMap<&'static str, ThresholdJson>,
    mute: Option<Mute>,
    open_windows: Vec<OpenWindowJson>,
    reports: Vec<DriftReport>,
    retrain_requests: Vec<RetrainRequest>,
}

impl Board {
    /// An empty board keeping `capacity` reports.
    pub fn new(capacity: usize, thresholds: BTreeMap<&'static str, Threshold>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(BoardState {
                capacity,
                reports: VecDeque::new(),
                requests: VecDeque::new(),
                thresholds,
                open: Vec::new(),
                last_mute: None,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoardState> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a published report.
    pub fn push_report(&self, report: DriftReport, mute: Option<Mute>) {
        let mut state = self.lock();
        state.reports.push_back(report);
        while state.reports.len() > state.capacity {
            state.reports.pop_front();
        }
        state.last_mute = mute;
    }

    /// Adds a retrain request seen on the topic.
    pub fn push_request(&self, request: RetrainRequest) {
        let mut state = self.lock();
        state.requests.push_back(request);
        while state.requests.len() > state.capacity {
            state.requests.pop_front();
        }
    }

    /// The reports kept (the last `--history`), oldest first.
    pub fn reports(&self) -> Vec<DriftReport> {
        self.lock().reports.iter().cloned().collect()
    }

    /// The retrain requests seen on the topic (the last `--history`), oldest first.
    pub fn requests(&self) -> Vec<RetrainRequest> {
        self.lock().requests.iter().cloned().collect()
    }

    /// Replaces the open-window summary.
    pub fn set_open(&self, open: Vec<(ModelRef, u64, bool)>) {
        self.lock().open = open;
    }

    fn snapshot(&self, live_mute: Option<Option<Mute>>) -> ReportsJson {
        let state = self.lock();
        ReportsJson {
            generated_at: chrono::Utc::now(),
            thresholds: state
                .thresholds
                .iter()
                .map(|(name, t)| {
                    (
                        *name,
                        ThresholdJson {
                            warn: t.warn,
                            drift: t.drift,
                        },
                    )
                })
                .collect(),
            mute: live_mute.unwrap_or_else(|| state.last_mute.clone()),
            open_windows: state
                .open
                .iter()
                .map(|(model, events, reference_ready)| OpenWindowJson {
                    model: model.clone(),
                    events: *events,
                    reference_ready: *reference_ready,
                })
                .collect(),
            reports: state.reports.iter().cloned().collect(),
            retrain_requests: state.requests.iter().cloned().collect(),
        }
    }
}

#[derive(Clone)]
struct HttpState {
    board: Board,
    control: Control,
}

/// The drift routes, merged into the standard health/metrics server.
pub fn router(board: Board, control: Control) -> Router {
    Router::new()
        .route("/dashboard", get(dashboard))
        .route("/api/reports", get(reports))
        .with_state(HttpState { board, control })
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        DASHBOARD_HTML,
    )
        .into_response()
}

async fn reports(State(state): State<HttpState>) -> Response {
    // The live mute (an operator may have changed it since the last report); Redis down → last known.
    let mute = match state.control.mute_status().await {
        Ok(mute) => Some(mute),
        Err(error) => {
            tracing::debug!(%error, "mute status unavailable for /api/reports");
            None
        }
    };
    let body = state.board.snapshot(mute);
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}
