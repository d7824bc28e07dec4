use clap::Parser;
use switchboard::{
    commands,
    config::{Cli, Command, Task},
    startup::{Application, prepare_database},
    telemetry,
};
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's malloc: under load the servers spent about a fifth of their CPU
/// in allocation (measured with `perf`, see the README's load section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Before any other thread exists: loading sets environment variables.
    load_dotenv()?;
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

/// Reads `.env` in the working directory, if there is one, into the environment; a variable the
/// real environment already has keeps its value. A file that cannot be read or parsed stops the
/// start.
fn load_dotenv() -> anyhow::Result<()> {
    match dotenvy::from_path(".env") {
        Ok(()) => Ok(()),
        Err(dotenvy::Error::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(anyhow::anyhow!(
            "reading .env in the working directory: {err}"
        )),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    telemetry::init(
        "info",
        cli.settings.log_socket_payloads,
        cli.settings.log_format,
    );
    switchboard::install_crypto_provider();
    let command = match cli.command.unwrap_or(Task::Run(Command::All)) {
        Task::Run(command) => command,
        task => return commands::run(&cli.settings, task).await,
    };
    if command == Command::Migrate {
        prepare_database(&cli.settings, command).await?;
        tracing::info!("database is up to date");
        return Ok(());
    }
    let app = Application::build(cli.settings, command).await?;
    if let Some(addr) = app.local_addr() {
        tracing::info!("Switchboard ({command:?}) listening on http://{addr}");
    } else {
        tracing::info!("Switchboard worker started");
    }
    if let Some(addr) = app.ops_addr() {
        tracing::info!("operator listener (apalis board) on http://{addr}");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("shutting down: finishing in-flight requests and jobs");
            shutdown.cancel();
        }
    });
    app.run_until_stopped(shutdown).await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
