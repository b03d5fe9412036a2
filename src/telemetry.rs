//! Logging through `tracing`: human-readable text or JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Logs what `RUST_LOG` selects (`info` without it) to standard output, in
/// colour only when that is a terminal and colour was not turned off.
pub fn init(format: LogFormat, no_color: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    install(format, filter, !no_color && std::io::stdout().is_terminal());
}

/// Logs what `directives` selects (`RUST_LOG` syntax), without colour; for
/// tests, which turn logs on with a variable of their own. Only the first call
/// in a process counts.
pub fn init_with(format: LogFormat, directives: &str) {
    install(format, EnvFilter::new(directives), false);
}

fn install(format: LogFormat, filter: EnvFilter, colour: bool) {
    let builder = fmt().with_env_filter(filter).with_ansi(colour);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
