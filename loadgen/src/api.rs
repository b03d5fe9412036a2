//! Setting up users through the public API, as a client would.

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use reqwest::Client;
use serde_json::{Value, json};

pub const PASSWORD: &str = "loadgen-password";

#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub token: String,
    /// The base URL this user's client talks to.
    pub url: String,
    /// Registered by an earlier run (see [`users`]), which also set it up as
    /// its scenario does: befriended its partner, say.
    pub reused: bool,
}

pub fn client() -> Client {
    Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("an HTTP client")
}

/// Registers and logs in `names[i]` against `common.url(i)`, or takes it from
/// `common.accounts` where an earlier run registered it there: for scenarios
/// whose setup holds for the next run with the same names (pairs befriended
/// again are skipped), unlike the HTTP ones (which log users out and fill
/// their mailboxes; they [`register`]).
pub async fn users(
    http: &Client,
    common: &crate::Common,
    names: Vec<String>,
) -> anyhow::Result<Vec<User>> {
    let Some(path) = &common.accounts else {
        return register(http, common, names).await;
    };
    let known = Accounts::read(path)?;
    let mut users: Vec<Option<User>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| known.get(common.url(i), name))
        .collect();
    let missing: Vec<usize> = (0..names.len()).filter(|&i| users[i].is_none()).collect();
    let registered = register_each(
        http,
        missing
            .iter()
            .map(|&i| (common.url(i).to_owned(), names[i].clone())),
    )
    .await?;
    Accounts::add(path, &registered)?;
    for (i, user) in missing.into_iter().zip(registered) {
        users[i] = Some(user);
    }
    Ok(users
        .into_iter()
        .map(|u| u.expect("each found or registered"))
        .collect())
}

/// Registers and logs in `names[i]` against `common.url(i)`, a few at a time
/// (each costs the server two password hashes).
pub async fn register(
    http: &Client,
    common: &crate::Common,
    names: Vec<String>,
) -> anyhow::Result<Vec<User>> {
    let urls = (0..names.len()).map(|i| common.url(i).to_owned());
    register_each(http, urls.zip(names)).await
}

async fn register_each(
    http: &Client,
    users: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<Vec<User>> {
    let jobs = users.map(|(url, name)| async move { register_and_login(http, &url, &name).await });
    stream::iter(jobs)
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Users registered by earlier runs: one line each, `url name id token`.
#[derive(Default)]
struct Accounts(std::collections::HashMap<(String, String), (i64, String)>);

impl Accounts {
    fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(err).context("reading the accounts file"),
        };
        let mut accounts = Self::default();
        for line in text.lines() {
            let [url, name, id, token] = line.split(' ').collect::<Vec<_>>()[..] else {
                bail!("a malformed line in the accounts file: {line}");
            };
            accounts.0.insert(
                (url.to_owned(), name.to_owned()),
                (id.parse().context("a user id")?, token.to_owned()),
            );
        }
        Ok(accounts)
    }

    fn get(&self, url: &str, name: &str) -> Option<User> {
        let (id, token) = self.0.get(&(url.to_owned(), name.to_owned()))?;
        Some(User {
            id: *id,
            name: name.to_owned(),
            token: token.clone(),
            url: url.to_owned(),
            reused: true,
        })
    }

    fn add(path: &std::path::Path, users: &[User]) -> anyhow::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .context("opening the accounts file")?;
        let lines: String = users
            .iter()
            .map(|u| format!("{} {} {} {}\n", u.url, u.name, u.id, u.token))
            .collect();
        file.write_all(lines.as_bytes())
            .context("writing the accounts file")
    }
}

/// The size of a real key: an X25519 public key in base64.
const PUBLIC_KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

async fn register_and_login(http: &Client, url: &str, name: &str) -> anyhow::Result<User> {
    let body = json!({"username": name, "email": format!("{name}@loadgen.test"), "password": PASSWORD, "public_key": PUBLIC_KEY});
    let registered = http
        .post(format!("{url}/users/"))
        .json(&body)
        .send()
        .await?;
    if !registered.status().is_success() {
        bail!("registering {name}: {}", registered.text().await?);
    }
    let registered: Value = registered.json().await?;
    let token = login(http, url, name).await?;
    Ok(User {
        id: registered["id"].as_i64().context("an id")?,
        name: name.to_owned(),
        token,
        url: url.to_owned(),
        reused: false,
    })
}

pub async fn login(http: &Client, url: &str, name: &str) -> anyhow::Result<String> {
    let answer: Value = http
        .post(format!("{url}/token"))
        .form(&[("username", name), ("password", PASSWORD)])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(answer["access_token"]
        .as_str()
        .context("a token")?
        .to_owned())
}

/// `owner` and each of `others` accept each other as contacts.
pub async fn befriend(http: &Client, owner: &User, others: &[User]) -> anyhow::Result<()> {
    let jobs = others.iter().map(|other| async move {
        http.post(format!("{}/me/contacts/", owner.url))
            .bearer_auth(&owner.token)
            .json(&json!({"friend_id": other.id}))
            .send()
            .await?
            .error_for_status()?;
        http.put(format!("{}/me/contacts/{}", other.url, owner.id))
            .bearer_auth(&other.token)
            .send()
            .await?
            .error_for_status()?;
        anyhow::Ok(())
    });
    stream::iter(jobs)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Users `2k` and `2k + 1` accept each other, for every `k` (but where an
/// earlier run registered both, and paired them so).
pub async fn befriend_pairs(http: &Client, users: &[User]) -> anyhow::Result<()> {
    let jobs = users
        .chunks_exact(2)
        .filter(|pair| !(pair[0].reused && pair[1].reused))
        .map(|pair| befriend(http, &pair[0], &pair[1..]));
    stream::iter(jobs)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// One `GET /messages/`: the caller's unread messages, now read.
pub async fn fetch_inbox(http: &Client, url: &str, token: &str) -> anyhow::Result<Vec<Value>> {
    Ok(http
        .get(format!("{url}/messages/"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

pub async fn logout(http: &Client, user: &User) -> anyhow::Result<()> {
    http.post(format!("{}/logout", user.url))
        .bearer_auth(&user.token)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

pub fn ws_url(user: &User) -> String {
    format!(
        "{}/ws?token={}",
        user.url.replacen("http", "ws", 1),
        user.token
    )
}
