//! Building the application and running it until a shutdown signal.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    body::Body,
    extract::Request,
    http::{HeaderName, HeaderValue, Method},
};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::{Layer, ServiceBuilder};
use tower_http::{
    cors::{AllowOrigin, Any, CorsLayer},
    normalize_path::{NormalizePath, NormalizePathLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    auth::jwt::Tokens,
    backends,
    config::Settings,
    domain::DirectMessage,
    serve::ConnectionLimits,
    service::{Services, hub::Hub},
    state::AppState,
};

pub struct App {
    listener: TcpListener,
    /// `/metrics` alone, when `METRICS_BIND` gives it a listener of its own.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    undelivered: mpsc::UnboundedReceiver<Arc<DirectMessage>>,
}

impl App {
    /// Connects the backends and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let (hub, undelivered) = Hub::new();
        let hub = Arc::new(hub);
        let shutdown = CancellationToken::new();
        let (backends, signing_keys) =
            backends::connect(&settings, hub.clone(), shutdown.clone()).await?;
        let services = Services::new(
            settings.clone(),
            backends,
            hub,
            Tokens::new(&signing_keys, settings.token_ttl()),
        )?;
        services
            .accounts
            .key_earlier_usernames()
            .await
            .context("giving earlier users their name skeletons")?;
        let listener = TcpListener::bind(settings.listen.bind).await.with_context(|| {
            format!(
                "cannot listen on {} (another server there? choose another address with BIND=HOST:PORT)",
                settings.listen.bind
            )
        })?;
        let metrics_listener = match settings.telemetry.metrics_bind {
            Some(at) => Some(
                TcpListener::bind(at)
                    .await
                    .with_context(|| format!("binding METRICS_BIND {at}"))?,
            ),
            None => None,
        };
        let state = AppState {
            services: Arc::new(services),
            metrics: crate::metrics::install(),
            shutdown,
            sessions: TaskTracker::new(),
            settings,
        };
        crate::metrics::configured(state.settings.connection_cap(), signing_keys.ids().len());
        crate::metrics::rate_limits_known(crate::ratelimit::Limit::ALL.map(|limit| limit.name()));
        Ok(Self {
            listener,
            metrics_listener,
            state,
            undelivered,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served when it has a listener of its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Every route as one service, for driving the application in process
    /// (the fuzz targets): what [`App::run_until_stopped`] serves, without
    /// the listener and its connection limits. Requests must carry the
    /// client's address as `ConnectInfo<SocketAddr>`.
    pub fn handler(&self) -> NormalizePath<Router> {
        application(self.state.clone())
    }

    /// Serves until `signal` completes, then drains: stops accepting, closes
    /// WebSockets with 1001, finishes in-flight requests, stores what could not be
    /// delivered, and returns.
    pub async fn run_until_stopped(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            metrics_listener,
            state,
            undelivered,
        } = self;
        tracing::info!(address = %listener.local_addr()?, "listening");
        let metrics = metrics_listener.map(|listener| serve_metrics(listener, &state));
        let shutdown = state.shutdown.clone();
        let background = [
            state
                .inbox
                .spawn(undelivered, shutdown.clone(), state.sessions.clone()),
            state.relay.spawn(shutdown.clone()),
            crate::metrics::spawn_upkeep(state.metrics.clone(), shutdown),
        ];
        let app = application(state.clone());
        let limits = ConnectionLimits {
            max_connections: state.settings.connection_cap(),
            header_read_timeout: state.settings.header_read_timeout(),
            body_read_timeout: state.settings.body_read_timeout(),
            answer_timeout: state.settings.answer_timeout(),
            idle_timeout: state.settings.connection_idle_timeout(),
            max_streams: state.settings.listen.http2_max_streams,
        };
        let shutdown = state.shutdown.clone();
        crate::serve::serve(listener, app, limits, async move {
            signal.await;
            tracing::info!("shutting down");
            shutdown.cancel();
        })
        .await;

        state.shutdown.cancel();
        state.sessions.close();
        if tokio::time::timeout(state.settings.shutdown_grace(), state.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("WebSocket sessions still open after the grace period");
        }
        futures_util::future::join_all(background).await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        Ok(())
    }
}

/// Serves `/metrics` alone on its internal listener until shutdown.
fn serve_metrics(listener: TcpListener, state: &AppState) -> JoinHandle<()> {
    if let Ok(at) = listener.local_addr() {
        tracing::info!(address = %at, "serving /metrics");
    }
    let app = crate::http::finish(crate::http::metrics_router(), state.clone());
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "the metrics listener failed");
        }
    })
}

/// Every route, HTTP and WebSocket, inside the layers all requests pass.
fn application(state: AppState) -> NormalizePath<Router> {
    let with_metrics = state.settings.telemetry.metrics_bind.is_none();
    let routes = crate::http::router(with_metrics).merge(crate::ws::router());
    let router = crate::http::finish(routes, state.clone()).layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(TraceLayer::new_for_http().make_span_with(request_span))
            .layer(cors(&state.settings)),
    );
    // Outermost, so that routing already sees `/users` for `/users/`: both
    // forms answer directly, never with a redirect.
    NormalizePathLayer::trim_trailing_slash().layer(router)
}

/// A request's span: method, path (never the query, which may carry a token)
/// and request id.
fn request_span(request: &Request<Body>) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "http",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id
    )
}

fn cors(settings: &Settings) -> CorsLayer {
    let origins = &settings.listen.cors_origins;
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(Any)
        .expose_headers([HeaderName::from_static("x-request-id")])
        .max_age(Duration::from_secs(600))
}

/// Whether a server listening on `bind` answers `/healthz` with 200 (blocking,
/// two seconds at most).
pub fn probe(bind: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let mut target = bind;
    if target.ip().is_unspecified() {
        target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let timeout = Duration::from_secs(2);
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&target, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    let mut answer = [0u8; 12];
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && answer.ends_with(b" 200")
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    // A signal that cannot be watched never arrives: it must not stop the
    // server at once.
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
