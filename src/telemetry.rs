//! Logging, set up once per process.
//!
//! The libraries that see raw traffic write it at debug and trace level: the Socket.IO ones
//! (`socketioxide*`, `engineioxide*`) handshake `auth` objects and packets, the WebSocket ones
//! (`tungstenite`, `tokio_tungstenite`) every frame's text, the HTTP ones (`hyper*`, `h2`)
//! headers: agents' tokens and visitors' session tokens. Their events below info are therefore
//! dropped whatever `RUST_LOG` says, unless `SWITCHBOARD_LOG_SOCKET_PAYLOADS` asks for them
//! (debugging on a machine of one's own).

use std::io::IsTerminal;

use tracing::Level;

use crate::config::LogFormat;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt, filter_fn},
    fmt,
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

/// Libraries whose debug and trace events carry what crosses the wire (see the module).
const WIRE_LEVEL: [&str; 6] = [
    "socketioxide",
    "engineioxide",
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "h2",
];

/// Whether an event of `target` at `level` may be written: the wire-level libraries' debug and
/// trace events carry credentials, and only `socket_payloads` lets them through.
pub fn allowed(target: &str, level: &Level, socket_payloads: bool) -> bool {
    let library = target.split("::").next().unwrap_or(target);
    socket_payloads
        || *level <= Level::INFO
        || !WIRE_LEVEL
            .iter()
            .any(|wire| library == *wire || library.starts_with(&format!("{wire}_")))
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `default_filter`); see the module
/// for what `socket_payloads` allows. Colour codes only on a terminal, unless `NO_COLOR` is set.
pub fn init(default_filter: &str, socket_payloads: bool, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let credentials = filter_fn(move |meta| allowed(meta.target(), meta.level(), socket_payloads));
    let layer = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colour())
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
    .with_filter(filter.and(credentials));
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layer).try_init();
    if socket_payloads {
        tracing::warn!(
            "SWITCHBOARD_LOG_SOCKET_PAYLOADS is on: the Socket.IO libraries' debug log carries tokens"
        );
    }
}

/// Whether text lines get colour codes: only on a terminal, and not when `NO_COLOR` is set (to
/// anything but the empty string, see no-color.org).
fn colour() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_libraries_log_info_and_above_unless_asked() {
        for target in [
            "socketioxide::client",
            "engineioxide::socket",
            "socketioxide_redis",
        ] {
            assert!(!allowed(target, &Level::DEBUG, false), "{target}");
            assert!(!allowed(target, &Level::TRACE, false), "{target}");
            assert!(allowed(target, &Level::INFO, false), "{target}");
            assert!(allowed(target, &Level::WARN, false), "{target}");
            assert!(allowed(target, &Level::DEBUG, true), "{target}");
        }
        for target in [
            "tungstenite::protocol",
            "tokio_tungstenite",
            "hyper::proto::h1",
            "h2::codec",
        ] {
            assert!(!allowed(target, &Level::TRACE, false), "{target}");
        }
        assert!(allowed("switchboard::realtime", &Level::DEBUG, false));
        assert!(allowed("h2o_lookalike", &Level::DEBUG, false));
        assert!(allowed("tower_http::trace", &Level::TRACE, false));
    }
}
