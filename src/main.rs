use mimalloc::MiMalloc;
use secchat::{
    backends,
    config::{Command, Settings},
    startup,
    startup::App,
    telemetry,
};

// Relaying is allocation-heavy (a frame, a message, a receipt each); mimalloc
// measurably beats the system allocator on it (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env_and_args();
    if settings.healthcheck {
        std::process::exit(if startup::probe(settings.listen.bind) {
            0
        } else {
            1
        });
    }
    telemetry::init(settings.telemetry.log_format, settings.telemetry.no_color);
    if let Some(Command::Backup { file }) = &settings.command {
        return match backends::backup(&settings, file).await {
            Ok(copied) => {
                tracing::info!(
                    file = %file.display(),
                    bytes = copied.bytes,
                    users = copied.users,
                    messages = copied.messages,
                    "backed up"
                );
                Ok(())
            }
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "the backup failed");
                Err(err)
            }
        };
    }
    let served = match App::build(settings).await {
        Ok(app) => {
            app.run_until_stopped(secchat::startup::shutdown_signal())
                .await
        }
        Err(err) => Err(err),
    };
    // In the log too (standard output, where a supervisor or a terminal
    // reads the rest), not only on standard error as `main`'s return does.
    if let Err(err) = &served {
        tracing::error!(error = format!("{err:#}"), "the server stopped");
    }
    served
}
