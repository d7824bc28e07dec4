//! Building and running the application: database, job storage, HTTP listener, workers.

use std::net::SocketAddr;

use anyhow::Context;
use jobs::{JobStore, WorkerOptions};
use migration::{Migrator, MigratorTrait};
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::TokenKeys,
    bootstrap,
    config::{Command, Settings},
    db, http, ops,
    realtime::{Realtime, deliver::RoomNotifier},
    state::AppState,
};

/// Connects to the database and makes its schema current (`all`, `migrate`) or checks that it is
/// (`serve`, `work`: several nodes must not race to migrate; run `switchboard migrate` first).
pub async fn prepare_database(
    settings: &Settings,
    command: Command,
) -> anyhow::Result<DatabaseConnection> {
    let db = db::connect(settings).await?;
    match command {
        Command::All | Command::Migrate => {
            Migrator::up(&db, None)
                .await
                .context("running migrations")?;
            bootstrap::first_account(&db, settings).await?;
        }
        Command::Serve | Command::Work => {
            let pending = Migrator::get_pending_migrations(&db).await?;
            if !pending.is_empty() {
                anyhow::bail!(
                    "the database schema is {} migration(s) behind: run `switchboard migrate` first",
                    pending.len()
                );
            }
        }
    }
    Ok(db)
}

/// A built application, listening but not yet serving.
pub struct Application {
    state: AppState,
    realtime: Realtime,
    listener: Option<TcpListener>,
    ops_listener: TcpListener,
    run_workers: bool,
}

/// How long open operator requests may run on after shutdown (the board's event stream never
/// ends by itself).
const OPS_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Application {
    /// Opens everything `command` needs. `Command::Migrate` is handled by [`prepare_database`].
    pub async fn build(settings: Settings, command: Command) -> anyhow::Result<Self> {
        // Installed before anything runs, so no count is lost before the first scrape.
        crate::metrics::handle();
        let db = prepare_database(&settings, command).await?;
        let jobs = match &settings.redis_url {
            Some(url) => JobStore::open_redis(url, &settings.redis_prefix).await,
            None => {
                crate::files::private_dir(&settings.data_dir)?;
                let path = settings.data_dir.join("jobs.db");
                crate::files::private_database(&path)?;
                JobStore::open_sqlite(&path).await
            }
        }?;
        let secret = bootstrap::jwt_secret(&settings)?;
        let tokens = TokenKeys::new(secret.as_bytes(), settings.jwt_ttl());
        let listener = match command {
            Command::All | Command::Serve => Some(
                TcpListener::bind(settings.bind)
                    .await
                    .with_context(|| format!("binding {}", settings.bind))?,
            ),
            Command::Work | Command::Migrate => None,
        };
        let ops_listener = TcpListener::bind(settings.ops_bind)
            .await
            .with_context(|| format!("binding the operator listener {}", settings.ops_bind))?;
        let redis_url = settings.redis_url.as_deref();
        let realtime = if listener.is_some() {
            Realtime::serve(redis_url, &settings.redis_prefix).await
        } else {
            Realtime::emit_only(redis_url, &settings.redis_prefix).await
        }
        .context("setting up Socket.IO")?;
        let channels = jobs::delivery::channels::Channels::new(&settings.channel_settings())
            .context("setting up webhooks and e-mail")?;
        let rooms = RoomNotifier::start(realtime.push.clone(), db.clone());
        let outbox = jobs::outbox::Outbox::new(channels.email_on());
        let batches = jobs::runtime::batch::Batches::start(&db, &jobs, &outbox);
        let notifier = jobs::delivery::fanout::Notifications::start(
            rooms.clone(),
            jobs::JobContext {
                db: db.clone(),
                jobs: jobs.clone(),
                notifier: rooms,
                outbox: outbox.clone(),
                presence_stale: settings.presence_stale(),
                channels: channels.clone(),
                batches: batches.clone(),
            },
        );
        let activity = jobs::activity::Activity::start(db.clone());
        let messages = jobs::messages::Messages::start(db.clone(), outbox.clone());
        let visitor_messages = crate::chat::budget::VisitorMessages::new(
            settings.widget_rate_per_minute.saturating_mul(10),
        );
        Ok(Self {
            state: AppState {
                db,
                jobs,
                tokens: tokens.into(),
                settings: settings.into(),
                notifier,
                outbox,
                activity,
                messages,
                channels,
                batches,
                visitor_messages,
                sockets: realtime.socket_count(),
            },
            realtime,
            listener,
            ops_listener,
            run_workers: matches!(command, Command::All | Command::Work),
        })
    }

    /// Where the HTTP API listens (`None` for a worker-only process).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where the operator listener (apalis board) listens.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_listener.local_addr().ok()
    }

    /// The shared state (tests use its database handle to check what jobs wrote).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// How this process pushes to sockets (tests push through it directly).
    pub fn push(&self) -> crate::realtime::Push {
        self.realtime.push.clone()
    }

    /// Serves and works until `shutdown` is cancelled; in-flight requests and jobs then finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            state,
            realtime,
            listener,
            ops_listener,
            run_workers,
        } = self;
        let ops = {
            let app = ops::router(&state).into_make_service_with_connect_info::<SocketAddr>();
            let shutdown = shutdown.clone();
            async move {
                let serve = axum::serve(ops_listener, app)
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                    .into_future();
                tokio::select! {
                    served = serve => served.context("operator listener")?,
                    () = async {
                        shutdown.cancelled().await;
                        tokio::time::sleep(OPS_DRAIN).await;
                    } => {}
                }
                anyhow::Ok(())
            }
        };
        let link = realtime.link();
        let ctx = state.job_context();
        let options = WorkerOptions {
            concurrency: state.settings.worker_concurrency.max(1),
            poll_interval: state.settings.poll_interval(),
            reconcile_period: std::time::Duration::from_secs(
                state.settings.reconcile_interval_seconds,
            ),
            sweep_period: std::time::Duration::from_secs(state.settings.sweep_interval_seconds),
            node: node_name(),
        };
        let http = {
            let shutdown = shutdown.clone();
            async move {
                if let Some(listener) = listener {
                    let push = realtime.push.clone();
                    tokio::spawn(crate::realtime::heartbeat(
                        push.clone(),
                        state.db.clone(),
                        state.settings.presence_heartbeat(),
                        shutdown.clone(),
                    ));
                    tokio::spawn(crate::realtime::push_stats(
                        push.clone(),
                        state.db.clone(),
                        state.settings.stats_interval(),
                        shutdown.clone(),
                    ));
                    let app = realtime
                        .mount(http::router(state.clone()), &state)
                        .await
                        .context("registering the Socket.IO namespaces")?
                        .layer(axum::middleware::from_fn_with_state(
                            http::rate_limit::Handshakes::new(
                                state.settings.socket_handshakes_per_minute,
                            ),
                            http::rate_limit::limit_handshakes,
                        ))
                        .layer(http::cors())
                        // Outermost: every layer and handler within reads the client address
                        // it decides.
                        .layer(axum::middleware::from_fn_with_state(
                            state.settings.trusted_proxies.clone(),
                            crate::client_ip::resolve,
                        ));
                    let app = http::observe::observe(app)
                        .into_make_service_with_connect_info::<SocketAddr>();
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            shutdown.cancelled().await;
                            // Open sockets would hold the server forever; clients reconnect
                            // to another node within the presence grace period.
                            push.close().await;
                        })
                        .await
                        .context("HTTP server")?;
                }
                anyhow::Ok(())
            }
        };
        let workers = async move {
            if run_workers {
                jobs::workers(ctx, &options)
                    .run(shutdown.cancelled_owned())
                    .await
                    .context("job workers")?;
            }
            anyhow::Ok(())
        };
        tokio::try_join!(http, workers, ops)?;
        // Stopped cleanly, every push sent: others must not take this for a silent death.
        if let Some(link) = link {
            link.leave().await;
        }
        Ok(())
    }
}

/// Unique among worker processes: host, pid and a random part (apalis refuses duplicate names).
fn node_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let suffix = ulid::Ulid::new().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[20..])
}
