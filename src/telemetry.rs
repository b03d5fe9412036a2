//! Logging through `tracing`: human-readable text or JSON lines.

use std::io::{IsTerminal, Write};

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
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(|| LogOutput(std::io::stdout()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Standard output for logs, whose write errors are dropped: a server goes on
/// serving when whatever read its logs went away (`cargo run --release | head`,
/// a closed terminal). Left to tracing, a failed write is reported on standard
/// error, and when that is the same closed pipe, the report itself panics.
struct LogOutput(std::io::Stdout);

impl Write for LogOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}
