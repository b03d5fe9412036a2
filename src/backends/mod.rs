//! The backends, and the one place that turns settings into them.
//!
//! - `memory`: presence, fan-out, rate limits and client ids in this process (the embedded default);
//! - `redis`: presence, fan-out, revoked tokens, rate limits and client ids shared by replicas;
//! - `sql`: the store (and, without Redis, revoked tokens) in SQLite or Postgres.

use std::{fs, io::Write, os::unix::fs::OpenOptionsExt, path::PathBuf, str::FromStr, sync::Arc};

use anyhow::{Context, bail};
use argon2::password_hash::rand_core::{OsRng, RngCore};
use secrecy::SecretString;
use sqlx::sqlite::SqliteConnectOptions;

use tokio_util::sync::CancellationToken;

use crate::{
    auth::jwt::SigningKeys,
    bus::{Bus, EventSink},
    capabilities::Backends,
    client_ids::ClientIds,
    config::{Settings, Switch},
    presence::Presence,
    ratelimit::{Limiter, LockoutPolicy, Rates, Unlimited},
    refresh::RefreshTokens,
    revocation::Revocations,
    store::Store,
};

pub mod memory;
pub mod redis;
pub mod sql;

/// Connects what the settings name: Postgres or SQLite for the store; Redis or
/// this process for presence and fan-out; Redis or the store for revoked
/// tokens; Redis or this process for rate limits (none with
/// `RATE_LIMITS=off`); and the keys tokens are signed with. `sink` receives the events fan-out brings to this
/// replica; `shutdown` stops the subscriber.
pub async fn connect(
    settings: &Settings,
    sink: Arc<dyn EventSink>,
    shutdown: CancellationToken,
) -> anyhow::Result<(Backends, SigningKeys)> {
    let signing_keys = match (&settings.accounts.jwt_keys, &settings.accounts.jwt_secret) {
        (Some(keys), _) => keys.clone(),
        (None, Some(secret)) => SigningKeys::single(secret.clone()),
        (None, None) if settings.uses_postgres() => {
            bail!(
                "JWT_SECRET (or JWT_KEYS) is required with Postgres: every replica must sign with the same secret"
            )
        }
        (None, None) => SigningKeys::single(sqlite_secret(&settings.storage.database_url)?),
    };
    tracing::info!(signing_key_ids = ?signing_keys.ids(), "tokens signed with the first key, accepted with any");
    let (store, store_revocations, refresh_tokens) = connect_store(settings).await?;
    let (rates, policy) = (
        Rates::from_settings(settings),
        LockoutPolicy::from_settings(settings),
    );
    let limits_on = settings.rates.rate_limits == Switch::On;
    let window = settings.dedup_window();
    let (presence, revocations, bus, limiter, client_ids) = match &settings.storage.redis_url {
        Some(url) => {
            let topology = redis::Topology::parse(url)?;
            let commands = redis::RedisCommands::open(&topology, settings.storage.redis_pool_size)?;
            let keys = redis::Keyspace::new(&settings.storage.redis_prefix, &topology);
            let replica = uuid::Uuid::new_v4().simple().to_string();
            let presence = redis::RedisPresence::connect(
                commands.clone(),
                keys.clone(),
                settings.presence_lease(),
                replica,
            )
            .await
            .context("connecting to Redis")?;
            let revocations = redis::RedisRevocations::new(commands.clone(), keys.clone());
            let client_ids = redis::RedisClientIds::new(commands.clone(), keys.clone(), window);
            let limiter: Arc<dyn Limiter> = if limits_on {
                Arc::new(redis::RedisLimiter::new(
                    commands.clone(),
                    keys.clone(),
                    rates,
                    policy,
                ))
            } else {
                Arc::new(Unlimited)
            };
            let bus = redis::RedisBus::start(
                &topology,
                commands,
                keys,
                settings.storage.bus_envelope,
                sink,
                shutdown,
            )
            .await?;
            (
                Arc::new(presence) as Arc<dyn Presence>,
                Arc::new(revocations) as Arc<dyn Revocations>,
                bus as Arc<dyn Bus>,
                limiter,
                Arc::new(client_ids) as Arc<dyn ClientIds>,
            )
        }
        None => (
            Arc::new(memory::MemoryPresence::new(settings.presence_lease())) as Arc<dyn Presence>,
            store_revocations,
            Arc::new(memory::MemoryBus::new(sink)) as Arc<dyn Bus>,
            if limits_on {
                memory::MemoryLimiter::new(rates, policy) as Arc<dyn Limiter>
            } else {
                Arc::new(Unlimited)
            },
            Arc::new(memory::MemoryClientIds::new(window)) as Arc<dyn ClientIds>,
        ),
    };
    let shared = if settings.storage.redis_url.is_some() {
        "redis"
    } else {
        "memory"
    };
    tracing::info!(
        store = if settings.uses_postgres() {
            "postgres"
        } else {
            "sqlite"
        },
        presence = shared,
        bus = shared,
        rate_limits = ?settings.rates.rate_limits,
        "backends ready"
    );
    let backends = Backends {
        store,
        revocations,
        refresh_tokens,
        presence,
        bus,
        limiter,
        client_ids,
    };
    Ok((backends, signing_keys))
}

/// The store, the revoked-token set it keeps (used when there is no Redis),
/// and the refresh tokens it keeps.
async fn connect_store(
    settings: &Settings,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn Revocations>, Arc<dyn RefreshTokens>)> {
    let (url, pool_size) = (
        &settings.storage.database_url,
        settings.storage.database_pool_size,
    );
    Ok(if settings.uses_postgres() {
        let pooler = settings.storage.database_pooler;
        let pg = Arc::new(sql::postgres::PostgresStore::connect(url, pool_size, pooler).await?);
        (pg.clone(), pg.clone(), pg)
    } else {
        let sqlite = Arc::new(sql::sqlite::SqliteStore::connect(url, pool_size).await?);
        (sqlite.clone(), sqlite.clone(), sqlite)
    })
}

/// `secchat backup FILE`: the embedded default's database copied while it
/// serves. Postgres has its own tools for this, which do it better.
pub async fn backup(
    settings: &Settings,
    to: &std::path::Path,
) -> anyhow::Result<sql::sqlite::BackupSummary> {
    if settings.uses_postgres() {
        bail!(
            "DATABASE_URL names Postgres: back it up with pg_dump --format=custom (docs/OPERATIONS.md, \"Backup and restore\")"
        );
    }
    if is_in_memory(&settings.storage.database_url) {
        bail!("DATABASE_URL names an in-memory database: there is nothing to back up");
    }
    sql::sqlite::backup(&settings.storage.database_url, to).await
}

/// The embedded default's signing secret: generated once and kept beside the
/// database file (mode 0600), so that tokens survive a restart.
fn sqlite_secret(database_url: &str) -> anyhow::Result<SecretString> {
    let options = SqliteConnectOptions::from_str(database_url)?;
    let db = options.get_filename();
    if is_in_memory(database_url) || db.as_os_str().is_empty() {
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

/// Whether a SQLite URL names an in-memory database (`sqlite::memory:`,
/// `sqlite://:memory:`, `?mode=memory`). sqlx gives such a database an
/// invented file name, which must not become the secret's path.
fn is_in_memory(database_url: &str) -> bool {
    let rest = database_url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//");
    rest.starts_with(":memory:") || rest.contains("mode=memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_databases_are_told_from_files() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://x.db?mode=memory",
        ] {
            assert!(is_in_memory(url), "{url}");
        }
        for url in [
            "sqlite://secchat.db",
            "sqlite:///var/lib/memory.db",
            "sqlite://memory.db",
        ] {
            assert!(!is_in_memory(url), "{url}");
        }
    }
}
