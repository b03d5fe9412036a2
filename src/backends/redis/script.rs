//! Lua scripts called by their SHA1, and sent whole where the node serving
//! their keys does not know them yet (a master promoted by a failover, or a
//! node that restarted): `EVAL` runs the script and caches it there. The
//! redis crate's own fallback loads a script on every node at once, which
//! fails, script after script, while one node of a cluster is down.

use redis::{Cmd, FromRedisValue, RedisResult, ToRedisArgs, aio::ConnectionLike};

pub struct Script {
    source: String,
    sha: String,
}

impl Script {
    pub fn new(source: &str) -> Self {
        Self {
            sha: redis::Script::new(source).get_hash().to_owned(),
            source: source.to_owned(),
        }
    }

    pub fn prepare_invoke(&self) -> Invocation<'_> {
        Invocation {
            script: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    pub fn key<T: ToRedisArgs>(&self, key: T) -> Invocation<'_> {
        let mut invocation = self.prepare_invoke();
        invocation.key(key);
        invocation
    }
}

/// A call of a script: its keys and arguments.
pub struct Invocation<'a> {
    script: &'a Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Invocation<'_> {
    pub fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// `EVALSHA` (`by_sha`) or `EVAL` of the script with these keys and arguments.
    pub fn command(&self, by_sha: bool) -> Cmd {
        let mut command = if by_sha {
            let mut c = redis::cmd("EVALSHA");
            c.arg(&self.script.sha);
            c
        } else {
            let mut c = redis::cmd("EVAL");
            c.arg(&self.script.source);
            c
        };
        command.arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        command
    }

    pub async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        match self.command(true).query_async(conn).await {
            Err(err) if is_no_script(&err) => self.command(false).query_async(conn).await,
            answer => answer,
        }
    }
}

pub fn is_no_script(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}
