//! The one place that turns settings into concrete backends.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};

use anyhow::{Context, bail};
use argon2::password_hash::rand_core::{OsRng, RngCore};
use secrecy::SecretString;
use sqlx::sqlite::SqliteConnectOptions;

use crate::{
    auth::revocation::Revocations,
    bus::{Bus, EventSink, memory::MemoryBus},
    config::Settings,
    presence::{Presence, memory::MemoryPresence},
    store::{Store, sqlite::SqliteStore},
};

pub struct Backends {
    pub store: Arc<dyn Store>,
    pub revocations: Arc<dyn Revocations>,
    pub presence: Arc<dyn Presence>,
    pub bus: Arc<dyn Bus>,
    pub jwt_secret: SecretString,
}

/// Connects what the settings name; `sink` receives the events fan-out brings here.
pub async fn connect(settings: &Settings, sink: Arc<dyn EventSink>) -> anyhow::Result<Backends> {
    if settings.uses_postgres() {
        bail!(
            "DATABASE_URL names Postgres, which this build does not support yet; use sqlite://FILE"
        );
    }
    if settings.redis_url.is_some() {
        bail!("REDIS_URL is set, but this build keeps presence and fan-out in process; unset it");
    }
    let sqlite =
        Arc::new(SqliteStore::connect(&settings.database_url, settings.database_pool_size).await?);
    let jwt_secret = match &settings.jwt_secret {
        Some(secret) => secret.clone(),
        None => sqlite_secret(&settings.database_url)?,
    };
    tracing::info!(
        store = "sqlite",
        presence = "memory",
        bus = "memory",
        "backends ready"
    );
    Ok(Backends {
        store: sqlite.clone(),
        revocations: sqlite,
        presence: Arc::new(MemoryPresence::new(settings.presence_lease())),
        bus: Arc::new(MemoryBus::new(sink)),
        jwt_secret,
    })
}

/// The embedded default's signing secret: generated once and kept beside the
/// database file (mode 0600), so that tokens survive a restart.
fn sqlite_secret(database_url: &str) -> anyhow::Result<SecretString> {
    let options = SqliteConnectOptions::from_str(database_url)?;
    let db = options.get_filename();
    if db.as_os_str().is_empty() || db == Path::new(":memory:") {
        return Ok(random_secret()); // an in-memory database dies with the process anyway
    }
    let mut path = PathBuf::from(db);
    path.as_mut_os_string().push(".jwt-secret");
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    match created {
        Ok(mut file) => {
            let secret = random_secret();
            file.write_all(secrecy::ExposeSecret::expose_secret(&secret).as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a JWT secret");
            Ok(secret)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let raw =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let raw = raw.trim();
            if raw.len() < 32 {
                bail!("{} holds a secret shorter than 32 bytes", path.display());
            }
            Ok(SecretString::from(raw.to_owned()))
        }
        Err(err) => Err(err).with_context(|| format!("creating {}", path.display())),
    }
}

fn random_secret() -> SecretString {
    let mut bytes = [0u8; 48];
    OsRng.fill_bytes(&mut bytes);
    SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}
