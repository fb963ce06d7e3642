//! Configuration changes take effect within a second: the files are watched, the
//! `reload_interval` poll (5 s here, the default) is only a fallback.

use std::time::{Duration, Instant};

use crate::common::gateway::{BITRIX, Gateway, token_sha256};
use crate::common::nats::NatsServer;
use crate::common::receiver::Receiver;
use crate::common::write_atomically;

const BASE: &str = r#"
listen = "127.0.0.1:0"

[participants.bitrix]
# token: bitrix-test-token-0001
tokens = [{ sha256 = "6f7a17080f9b8781bb90236ac71d2e21af3f6860216469964801679cf08e16d3" }]
publish = ["orders.>"]
"#;

/// A folder with the config file, `streams/ORDERS.json` and an empty `contracts/`.
fn bus() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = crate::common::gateway::orders_bus_dir();
    let config = dir.path().join("magistral.toml");
    std::fs::write(&config, BASE).unwrap();
    (dir, config)
}

/// Saves a participant and its push subscription, then publishes every 20 ms until the first
/// push arrives; the time from the save to that push, five times over.
#[tokio::test]
async fn a_saved_participant_and_subscription_get_their_first_push_within_two_seconds_every_time() {
    let nats = NatsServer::start();
    let (_dir, config) = bus();
    let gw =
        Gateway::start_with(config.clone(), &nats.url(), |c| assert_eq!(c.reload_interval, Duration::from_secs(5)))
            .await;
    // A second replica on the same files: it must take the change as quickly.
    let other = Gateway::start_with(config.clone(), &nats.url(), |_| {}).await;
    let mut text = BASE.to_owned();
    let (mut times, mut other_times) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let receiver = Receiver::start().await;
        let subject = format!("orders.live{i}");
        let hash = token_sha256(format!("crm-live-token-{i}"));
        text.push_str(&format!(
            "\n[participants.crm{i}]\ntokens = [{{ sha256 = \"{hash}\" }}]\nsubscribe = [\"{subject}\"]\n\n\
             [subscriptions.live{i}]\nparticipant = \"crm{i}\"\nsubjects = [\"{subject}\"]\nendpoint = \"{}\"\n",
            receiver.url()
        ));
        let saved = Instant::now();
        write_atomically(&config, &text);
        while receiver.received().is_empty() {
            let elapsed = saved.elapsed();
            assert!(
                elapsed < Duration::from_secs(2),
                "save {i}: no push {elapsed:?} after the save (so far {times:?})"
            );
            let answer = gw.publish(BITRIX, &subject, r#"{"n":1}"#).send().await.unwrap();
            assert_eq!(answer.status(), 202);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        times.push(saved.elapsed());
        // The other replica knows the new participant within the same bound.
        let token = format!("crm-live-token-{i}");
        loop {
            let answer = other.http.get(other.url("/v1/subscriptions")).bearer_auth(&token).send().await.unwrap();
            if answer.status() == 200 {
                break;
            }
            let elapsed = saved.elapsed();
            assert!(elapsed < Duration::from_secs(2), "save {i}: the other replica refuses crm{i} {elapsed:?} after");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        other_times.push(saved.elapsed());
    }
    eprintln!("first push after the save: {times:?}; the other replica knew the participant after {other_times:?}");
}

/// A Kubernetes ConfigMap update: the files are symlinks into `..data`, which is swapped to
/// a new folder in one rename; nothing is written to the files the gateway opened.
#[cfg(unix)]
#[tokio::test]
async fn a_configmap_symlink_swap_takes_effect_within_two_seconds() {
    use std::os::unix::fs::symlink;
    let nats = NatsServer::start();
    let (dir, _) = bus();
    let mount = dir.path().join("mount");
    std::fs::create_dir_all(mount.join("..2026_12_02_1")).unwrap();
    std::fs::write(
        mount.join("..2026_12_02_1/magistral.toml"),
        format!("streams_dir = \"../streams\"\ncontracts_dir = \"../contracts\"\n{BASE}"),
    )
    .unwrap();
    symlink("..2026_12_02_1", mount.join("..data")).unwrap();
    symlink("..data/magistral.toml", mount.join("magistral.toml")).unwrap();
    let gw = Gateway::start_with(mount.join("magistral.toml"), &nats.url(), |_| {}).await;

    let receiver = Receiver::start().await;
    let hash = token_sha256("crm-live-token-cm");
    std::fs::create_dir_all(mount.join("..2026_12_02_2")).unwrap();
    std::fs::write(
        mount.join("..2026_12_02_2/magistral.toml"),
        format!(
            "streams_dir = \"../streams\"\ncontracts_dir = \"../contracts\"\n{BASE}\n[participants.crm]\ntokens = [{{ sha256 = \"{hash}\" }}]\n\
             subscribe = [\"orders.cm\"]\n\n[subscriptions.cm]\nparticipant = \"crm\"\nsubjects = [\"orders.cm\"]\n\
             endpoint = \"{}\"\n",
            receiver.url()
        ),
    )
    .unwrap();
    // What the kubelet does: a new `..data_tmp` link, renamed over `..data`.
    symlink("..2026_12_02_2", mount.join("..data_tmp")).unwrap();
    let saved = Instant::now();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    while receiver.received().is_empty() {
        assert!(saved.elapsed() < Duration::from_secs(2), "no push {:?} after the swap", saved.elapsed());
        assert_eq!(gw.publish(BITRIX, "orders.cm", "{}").send().await.unwrap().status(), 202);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("first push after the swap: {:?}", saved.elapsed());
}

/// `[participants.p{i}]` with the token `scale-token-{i}` for each `i` in `ids`.
fn many_participants(ids: impl Iterator<Item = usize>, token: impl Fn(usize) -> String) -> String {
    let mut text = BASE.to_owned();
    for i in ids {
        let hash = token_sha256(token(i));
        text.push_str(&format!(
            "\n[participants.p{i}]\ntokens = [{{ sha256 = \"{hash}\" }}]\nsubscribe = [\"orders.p{i}\"]\n"
        ));
    }
    text
}

/// Thousands of participants: each token finds its own participant (looked up, not scanned),
/// and a hot reload rebuilds the index — a removed participant and a rotated token are refused,
/// an added one is accepted.
#[tokio::test]
async fn thousands_of_participants_authenticate_by_their_own_token_and_a_reload_rebuilds_the_index() {
    const N: usize = 3_000;
    let nats = NatsServer::start();
    let (_dir, config) = bus();
    let old = |i: usize| format!("scale-token-{i}");
    write_atomically(&config, many_participants(0..N, old));
    let gw = Gateway::start_with(config.clone(), &nats.url(), |_| {}).await;
    let status = |token: String| {
        let request = gw.http.get(gw.url("/v1/subscriptions")).bearer_auth(token).send();
        async move { request.await.unwrap().status().as_u16() }
    };
    for i in [0, 1, N / 2, N - 1] {
        assert_eq!(status(old(i)).await, 200, "p{i}'s token");
    }
    assert_eq!(status(old(N)).await, 401, "a token nobody holds");
    assert_eq!(status(BITRIX.to_owned()).await, 200, "the participant listed before them");

    // p0 removed, p1's token rotated, p{N} added.
    let new = |i: usize| if i == 1 { "scale-token-1-rotated".to_owned() } else { format!("scale-token-{i}") };
    let saved = Instant::now();
    write_atomically(&config, many_participants(1..=N, new));
    while status(new(N)).await != 200 {
        assert!(saved.elapsed() < Duration::from_secs(5), "p{N} still refused {:?} after the save", saved.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(old(0)).await, 401, "the removed participant's token");
    assert_eq!(status(old(1)).await, 401, "p1's old token");
    assert_eq!(status(new(1)).await, 200, "p1's new token");
    assert_eq!(status(old(N / 2)).await, 200, "an unchanged participant");
    eprintln!("{N} participants; the added one accepted {:?} after the save", saved.elapsed());
}
