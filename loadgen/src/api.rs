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
}

pub fn client() -> Client {
    Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("an HTTP client")
}

/// Registers and logs in `names[i]` against `urls(i)`, a few at a time (each
/// costs the server two password hashes).
pub async fn users(
    http: &Client,
    names: Vec<String>,
    url_of: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<User>> {
    let jobs = names.into_iter().enumerate().map(|(i, name)| {
        let url = url_of(i);
        async move { register_and_login(http, &url, &name).await }
    });
    stream::iter(jobs)
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
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

/// Users `2k` and `2k + 1` accept each other, for every `k`.
pub async fn befriend_pairs(http: &Client, users: &[User]) -> anyhow::Result<()> {
    let jobs = users
        .chunks_exact(2)
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
