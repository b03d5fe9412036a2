//! HTTP scenarios: the online-contacts panel, offline messages, a login storm.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::ensure;
use clap::Args;
use futures_util::{StreamExt, stream};
use hdrhistogram::Histogram;
use reqwest::Client;
use serde_json::{Value, json};

use crate::{
    Common,
    api::{self, User},
    measure::{self, Window},
};

/// A user with `contacts` mutual contacts, of which the first half stay online
/// and the rest log out.
async fn user_with_contacts(
    common: &Common,
    http: &Client,
    tag: &str,
    contacts: usize,
) -> anyhow::Result<User> {
    let prefix = common.prefix();
    let mut names = vec![format!("{prefix}{tag}owner")];
    names.extend((0..contacts).map(|i| format!("{prefix}{tag}{i}")));
    let mut users = api::register(http, common, names).await?;
    let owner = users.remove(0);
    api::befriend(http, &owner, &users).await?;
    for offline in &users[contacts / 2..] {
        api::logout(http, offline).await?;
    }
    Ok(owner)
}

/// Runs `k` workers calling `request` until `window` passes; returns the count
/// and the latency histogram.
async fn hammer<F, Fut>(
    k: usize,
    window: Duration,
    request: F,
) -> anyhow::Result<(u64, Histogram<u64>)>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let request = Arc::new(request);
    let until = Instant::now() + window;
    let workers: Vec<_> = (0..k.max(1))
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut latency = measure::histogram();
                while Instant::now() < until {
                    let started = Instant::now();
                    request().await?;
                    measure::record(&mut latency, started.elapsed());
                }
                anyhow::Ok(latency)
            })
        })
        .collect();
    let mut latency = measure::histogram();
    for worker in workers {
        latency.add(worker.await??)?;
    }
    Ok((latency.len(), latency))
}

#[derive(Args)]
pub struct OnlineArgs {
    /// Contacts of the user, half of them online.
    #[arg(long, default_value_t = 200)]
    contacts: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

pub async fn online(common: &Common, args: OnlineArgs) -> anyhow::Result<Value> {
    let setup = Instant::now();
    let http = api::client();
    let owner = user_with_contacts(common, &http, "o", args.contacts).await?;
    let url = format!("{}/me/contacts/online", owner.url);
    let first: Vec<Value> = http
        .get(&url)
        .bearer_auth(&owner.token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(
        first.len() == args.contacts / 2,
        "expected {} online contacts, got {}",
        args.contacts / 2,
        first.len()
    );
    let setup_s = setup.elapsed().as_secs_f64();

    let window = Window::start(common);
    let (count, latency) = hammer(args.concurrency, common.window(), move || {
        let (http, url, token) = (http.clone(), url.clone(), owner.token.clone());
        async move {
            http.get(&url)
                .bearer_auth(&token)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            Ok(())
        }
    })
    .await?;
    let (wall, cpu) = window.finish();
    Ok(json!({
        "scenario": "http-online",
        "replicas": common.urls.len(),
        "contacts": args.contacts,
        "online": args.contacts / 2,
        "concurrency": args.concurrency,
        "setup_s": (setup_s * 10.0).round() / 10.0,
        "window_s": (wall * 100.0).round() / 100.0,
        "requests": count,
        "requests_per_s": measure::rate(count, wall),
        "latency": measure::summary(&latency),
        "server_cpu_s": cpu,
        "server_cpu_us_per_request": measure::cpu_us_per(cpu, count),
    }))
}

#[derive(Args)]
pub struct OfflineArgs {
    /// Messages to store.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Senders and recipients (each).
    #[arg(long, default_value_t = 10)]
    users: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

pub async fn offline(common: &Common, args: OfflineArgs) -> anyhow::Result<Value> {
    let setup = Instant::now();
    let http = api::client();
    let prefix = common.prefix();
    let n = args.users.max(1);
    let names = (0..2 * n).map(|i| format!("{prefix}m{i}")).collect();
    let users = api::register(&http, common, names).await?;
    let (senders, recipients) = users.split_at(n);
    // People write to their contacts (a stranger's budget in a mailbox is small).
    for sender in senders {
        api::befriend(&http, sender, recipients).await?;
    }
    let setup_s = setup.elapsed().as_secs_f64();

    let window = Window::start(common);
    let posts = (0..args.messages).map(|i| {
        let (http, sender, recipient) = (&http, &senders[i % n], &recipients[(i / n) % n]);
        async move {
            let stored: Value = http
                .post(format!("{}/messages/", sender.url))
                .bearer_auth(&sender.token)
                .json(&json!({"recipient_username": recipient.name, "encrypted_content": format!("ct-{i}")}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok(stored["id"].as_i64().unwrap_or_default())
        }
    });
    let stored: Vec<i64> = stream::iter(posts)
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let (store_wall, store_cpu) = window.finish();

    // The drain: every recipient fetched by several clients at once, through
    // different replicas, until nothing is left.
    let window = Window::start(common);
    let fetchers = recipients
        .iter()
        .flat_map(|r| (0..4).map(move |k| (r, k)))
        .map(|(recipient, k)| {
            let http = http.clone();
            let url = common.url(k).to_owned();
            let token = recipient.token.clone();
            async move {
                let mut ids = Vec::new();
                loop {
                    let batch = api::fetch_inbox(&http, &url, &token).await?;
                    if batch.is_empty() {
                        return anyhow::Ok(ids);
                    }
                    ids.extend(batch.iter().filter_map(|m| m["id"].as_i64()));
                }
            }
        });
    let fetched: Vec<Vec<i64>> = futures_util::future::join_all(fetchers)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let (drain_wall, drain_cpu) = window.finish();
    let fetched: Vec<i64> = fetched.into_iter().flatten().collect();
    let unique: HashSet<i64> = fetched.iter().copied().collect();
    let expected: HashSet<i64> = stored.iter().copied().collect();
    Ok(json!({
        "scenario": "http-offline",
        "replicas": common.urls.len(),
        "messages": args.messages,
        "concurrency": args.concurrency,
        "setup_s": (setup_s * 10.0).round() / 10.0,
        "store_s": (store_wall * 100.0).round() / 100.0,
        "stored_per_s": measure::rate(stored.len() as u64, store_wall),
        "store_server_cpu_us_per_message": measure::cpu_us_per(store_cpu, stored.len() as u64),
        "drain_s": (drain_wall * 100.0).round() / 100.0,
        "drained_per_s": measure::rate(fetched.len() as u64, drain_wall),
        "drain_server_cpu_us_per_message": measure::cpu_us_per(drain_cpu, fetched.len() as u64),
        "fetched": fetched.len(),
        "duplicates": fetched.len() - unique.len(),
        "missing": expected.difference(&unique).count(),
        "exactly_once": fetched.len() == unique.len() && unique == expected,
    }))
}

#[derive(Args)]
pub struct StormArgs {
    /// Contacts of the probed user, half online.
    #[arg(long, default_value_t = 20)]
    contacts: usize,
    /// Logins in flight at once during the storm.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

pub async fn storm(common: &Common, args: StormArgs) -> anyhow::Result<Value> {
    let setup = Instant::now();
    let http = api::client();
    let owner = user_with_contacts(common, &http, "s", args.contacts).await?;
    let prefix = common.prefix();
    let names = (0..args.concurrency.max(1))
        .map(|i| format!("{prefix}st{i}"))
        .collect();
    let stormers = Arc::new(api::register(&http, common, names).await?);
    let setup_s = setup.elapsed().as_secs_f64();

    let probe = |http: Client, owner: User, window: Duration| {
        hammer(1, window, move || {
            let (http, owner) = (http.clone(), owner.clone());
            async move {
                http.get(format!("{}/me/contacts/online", owner.url))
                    .bearer_auth(&owner.token)
                    .send()
                    .await?
                    .error_for_status()?;
                Ok(())
            }
        })
    };
    let (_, calm) = probe(http.clone(), owner.clone(), common.window()).await?;

    let window = Window::start(common);
    let storm = tokio::spawn({
        let (http, stormers) = (http.clone(), stormers.clone());
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        hammer(args.concurrency, common.window(), move || {
            let (http, stormers, next) = (http.clone(), stormers.clone(), next.clone());
            async move {
                let user = &stormers
                    [next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % stormers.len()];
                api::login(&http, &user.url, &user.name).await?;
                Ok(())
            }
        })
    });
    let (_, stormy) = probe(http.clone(), owner.clone(), common.window()).await?;
    let (logins, login_latency) = storm.await??;
    let (wall, cpu) = window.finish();
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64;
    Ok(json!({
        "scenario": "login-storm",
        "replicas": common.urls.len(),
        "concurrency": args.concurrency,
        "setup_s": (setup_s * 10.0).round() / 10.0,
        "window_s": (wall * 100.0).round() / 100.0,
        "logins": logins,
        "logins_per_s": measure::rate(logins, wall),
        "login_latency": measure::summary(&login_latency),
        "probe_calm": measure::summary(&calm),
        "probe_storm": measure::summary(&stormy),
        "probe_p99_ratio": ((p99(&stormy) / p99(&calm).max(1.0)) * 100.0).round() / 100.0,
        "server_cpu_s": cpu,
    }))
}
