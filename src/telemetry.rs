//! Logging through `tracing`: human-readable text or JSON lines.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Logs what `RUST_LOG` selects (`info` without it).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    install(format, filter);
}

/// Logs what `directives` selects (`RUST_LOG` syntax); for tests, which turn
/// logs on with a variable of their own. Only the first call in a process counts.
pub fn init_with(format: LogFormat, directives: &str) {
    install(format, EnvFilter::new(directives));
}

fn install(format: LogFormat, filter: EnvFilter) {
    let builder = fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
