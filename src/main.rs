use clap::Parser;
use secchat::{config::Settings, startup::App, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    telemetry::init(settings.log_format);
    let app = App::build(settings).await?;
    app.run_until_stopped(secchat::startup::shutdown_signal())
        .await
}
