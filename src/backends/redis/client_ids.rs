//! Client ids in Redis, shared by replicas: one key per sender and client id,
//! expiring after the window; checking and naming is one script call.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use super::script::Script;
use async_trait::async_trait;

use super::{Keyspace, RedisCommands, with_redis};
use crate::{
    client_ids::{ClientIdError, ClientIds},
    domain::UserId,
};

static REMEMBER: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/remember.lua")));
static FORGET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/forget.lua")));

pub struct RedisClientIds {
    redis: Arc<RedisCommands>,
    keys: Keyspace,
    window: Duration,
}

impl RedisClientIds {
    pub fn new(redis: Arc<RedisCommands>, keys: Keyspace, window: Duration) -> Self {
        Self {
            redis,
            keys,
            window,
        }
    }
}

#[async_trait]
impl ClientIds for RedisClientIds {
    async fn remember(
        &self,
        sender: UserId,
        client_id: &str,
        id: i64,
    ) -> Result<Option<i64>, ClientIdError> {
        let window_ms = u64::try_from(self.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut call = REMEMBER.prepare_invoke();
        call.key(self.keys.client_id(sender, client_id))
            .arg(id)
            .arg(window_ms);
        with_redis(&self.redis, |mut c| async move {
            call.invoke_async::<Option<i64>>(&mut c).await
        })
        .await
        .map_err(ClientIdError)
    }

    async fn forget(&self, sender: UserId, client_id: &str, id: i64) -> Result<(), ClientIdError> {
        let mut call = FORGET.prepare_invoke();
        call.key(self.keys.client_id(sender, client_id)).arg(id);
        with_redis(&self.redis, |mut c| async move {
            call.invoke_async::<()>(&mut c).await
        })
        .await
        .map_err(ClientIdError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backends::redis::testing, client_ids::contract};

    #[tokio::test]
    #[ignore = "needs Redis: run with --include-ignored (CI does)"]
    async fn contract_holds() {
        let fresh = |window| {
            let (redis, keys) = testing::commands();
            RedisClientIds::new(redis, keys, window)
        };
        let window = Duration::from_secs(60);
        contract::a_client_id_names_one_message_per_sender(&fresh(window)).await;
        contract::a_refused_message_is_forgotten(&fresh(window)).await;
        contract::client_ids_are_forgotten_after_the_window(&fresh(contract::WINDOW)).await;
    }
}
