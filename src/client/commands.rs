//! The client commands: their arguments, the API calls behind each, and what they print.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{Answer, Api, Failure};
use super::output::{Table, cell, excerpt, print};
use super::sse;

/// Where the gateway is and who is asking; shared by every client command.
#[derive(Args, Clone)]
pub(crate) struct Gateway {
    /// The gateway's base URL.
    #[arg(long, env = "MAGISTRAL_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token of the participant to act as. Prefer the variable: arguments are visible
    /// to other users in `ps`.
    #[arg(long, env = "MAGISTRAL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON answer (one line) instead of a table.
    #[arg(long)]
    json: bool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("json", &self.json)
            .finish()
    }
}

/// Commands that talk to a running gateway.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Publish one JSON message from FILE (or standard input) to SUBJECT.
    Publish(PublishArgs),
    /// Where is a message? Its stream, and for each subscription that should get it, how far
    /// it got.
    Where(WhereArgs),
    /// Follow a `stream` subscription live (Server-Sent Events); a dropped connection is
    /// resumed after the last event seen.
    Tail(TailArgs),
    /// Subscriptions and their state: paused, breaker open, behind, dead letters, last error.
    Subs(SubsArgs),
    /// A subscription's dead letters: list them, or replay or discard some or all.
    DeadLetters(DeadLettersArgs),
    /// Pause a subscription (on every replica); messages wait in their stream.
    Pause(SubscriptionArgs),
    /// Resume a paused subscription.
    Resume(SubscriptionArgs),
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The subject, e.g. `orders.created`.
    subject: String,
    /// A file with the JSON data; `-` or nothing reads standard input.
    file: Option<PathBuf>,
    /// Message id (sent as `Idempotency-Key`): publishing the same id again within the
    /// stream's duplicate window stores nothing new.
    #[arg(long)]
    id: Option<String>,
    /// CloudEvents type (`ce-type`); the subject when not given.
    #[arg(long = "type", value_name = "TYPE")]
    kind: Option<String>,
    /// Correlation id (`ce-correlationid`), to follow a business transaction with
    /// `where --correlation`.
    #[arg(long, value_name = "ID")]
    correlation: Option<String>,
    #[command(flatten)]
    gateway: Gateway,
}

#[derive(Args, Debug)]
pub struct WhereArgs {
    /// The message id (the publisher's `Idempotency-Key`, `ce-id`, or the id the gateway gave).
    #[arg(required_unless_present = "correlation", conflicts_with = "correlation")]
    id: Option<String>,
    /// Every message of one correlation id instead, oldest first.
    #[arg(long, value_name = "CORRELATION_ID")]
    correlation: Option<String>,
    #[command(flatten)]
    gateway: Gateway,
}

#[derive(Args, Debug)]
pub struct TailArgs {
    /// A subscription with `mode = "stream"`.
    subscription: String,
    /// Start after this event id (sent as `Last-Event-ID`); without it the subscription's
    /// `start` applies.
    #[arg(long, value_name = "EVENT_ID")]
    from: Option<String>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    #[command(flatten)]
    gateway: Gateway,
}

#[derive(Args, Debug)]
pub struct SubsArgs {
    /// One subscription only.
    name: Option<String>,
    #[command(flatten)]
    gateway: Gateway,
}

#[derive(Args, Debug)]
pub struct DeadLettersArgs {
    /// The subscription.
    subscription: String,
    /// Replay these dead letters (message ids or `dlq-<seq>`), or with `--all` every one.
    #[arg(long, num_args = 0.., value_name = "ID", conflicts_with = "discard")]
    replay: Option<Vec<String>>,
    /// Remove these dead letters for good, or with `--all` every one.
    #[arg(long, num_args = 0.., value_name = "ID")]
    discard: Option<Vec<String>>,
    /// With `--replay` or `--discard`: every dead letter of the subscription.
    #[arg(long)]
    all: bool,
    /// Listing: continue after this dead-letter sequence (the `next` of the previous page).
    #[arg(long, value_name = "SEQ")]
    after: Option<u64>,
    /// Listing: at most this many (1–1000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(flatten)]
    gateway: Gateway,
}

#[derive(Args, Debug)]
pub struct SubscriptionArgs {
    /// The subscription.
    subscription: String,
    #[command(flatten)]
    gateway: Gateway,
}

impl ClientCommand {
    fn gateway(&self) -> &Gateway {
        match self {
            Self::Publish(a) => &a.gateway,
            Self::Where(a) => &a.gateway,
            Self::Tail(a) => &a.gateway,
            Self::Subs(a) => &a.gateway,
            Self::DeadLetters(a) => &a.gateway,
            Self::Pause(a) | Self::Resume(a) => &a.gateway,
        }
    }
}

/// Runs a command against the gateway named by its arguments.
pub(crate) async fn run(command: ClientCommand) -> Result<(), Failure> {
    let gateway = command.gateway();
    let api = Api::new(&gateway.url, gateway.token.clone())?;
    let json = gateway.json;
    match command {
        ClientCommand::Publish(args) => publish(&api, args, json).await,
        ClientCommand::Where(args) => locate(&api, args, json).await,
        ClientCommand::Tail(args) => tail(&api, args, json).await,
        ClientCommand::Subs(args) => subs(&api, args, json).await,
        ClientCommand::DeadLetters(args) => dead_letters(&api, args, json).await,
        ClientCommand::Pause(args) => operate(&api, &args.subscription, "pause", json).await,
        ClientCommand::Resume(args) => operate(&api, &args.subscription, "resume", json).await,
    }
}

/// Prints an answer as the API gave it (`--json`), or as `human` renders it.
fn show<T: serde::de::DeserializeOwned>(
    answer: &Answer,
    json: bool,
    human: impl FnOnce(T) -> String,
) -> Result<(), Failure> {
    if json {
        print(&format!("{}\n", answer.text.trim_end()));
        return Ok(());
    }
    let value = T::deserialize(&answer.json)
        .map_err(|e| Failure::Protocol { url: answer.url.clone(), why: format!("unexpected answer shape: {e}") })?;
    print(&human(value));
    Ok(())
}

// --- publish ---

#[derive(Deserialize)]
struct Stored {
    id: String,
    stream: String,
    seq: u64,
    duplicate: bool,
}

async fn publish(api: &Api, args: PublishArgs, json: bool) -> Result<(), Failure> {
    let body = match args.file.as_deref() {
        None => read_stdin()?,
        Some(path) if path.as_os_str() == "-" => read_stdin()?,
        Some(path) => {
            std::fs::read(path).map_err(|source| Failure::Input { path: path.display().to_string(), source })?
        }
    };
    let mut headers = HeaderMap::new();
    for (name, value) in
        [("idempotency-key", &args.id), ("ce-type", &args.kind), ("ce-correlationid", &args.correlation)]
    {
        if let Some(value) = value {
            let value = HeaderValue::from_str(value)
                .map_err(|_| Failure::Usage(format!("{name} {value:?}: only visible ASCII can be sent in a header")))?;
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    let answer = api.post_bytes(&["v1", "publish", &args.subject], headers, body).await?;
    show(&answer, json, |s: Stored| {
        if s.duplicate {
            format!("duplicate: {} was stored before (stream {}, seq {}); nothing new stored\n", s.id, s.stream, s.seq)
        } else {
            format!("stored {} (stream {}, seq {})\n", s.id, s.stream, s.seq)
        }
    })
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .map_err(|source| Failure::Input { path: "standard input".to_owned(), source })?;
    Ok(body)
}

// --- where ---

#[derive(Deserialize)]
struct Tracked {
    id: Option<String>,
    subject: String,
    stream: String,
    seq: u64,
    publisher: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    time: String,
    correlation_id: Option<String>,
    subscriptions: Vec<Whereabouts>,
}

/// Where a message is for one subscription (`SubscriptionDelivery` in src/tracking.rs).
#[derive(Deserialize)]
struct Whereabouts {
    name: String,
    participant: String,
    mode: String,
    state: String,
    attempts: Option<u32>,
    at: Option<String>,
    class: Option<String>,
    status: Option<u16>,
    next_attempt: Option<String>,
    last_error: Option<LastFailure>,
    detail: Option<String>,
}

#[derive(Deserialize)]
struct LastFailure {
    class: Option<String>,
    status: Option<u16>,
    at: String,
}

impl Whereabouts {
    /// What there is to say about the state, in a few words.
    fn detail(&self) -> String {
        let failure = |class: &Option<String>, status: Option<u16>| {
            let mut s = class.clone().unwrap_or_else(|| "failed".to_owned());
            if let Some(status) = status {
                s.push_str(&format!(" {status}"));
            }
            s
        };
        let mut parts = Vec::new();
        if let Some(e) = &self.last_error {
            parts.push(format!("last error {} at {}", failure(&e.class, e.status), e.at));
        }
        if self.class.is_some() || self.status.is_some() {
            parts.push(failure(&self.class, self.status));
        }
        if let Some(next) = &self.next_attempt {
            parts.push(format!("next attempt {next}"));
        }
        if let Some(at) = &self.at {
            parts.push(format!("at {at}"));
        }
        if let Some(detail) = &self.detail {
            parts.push(detail.clone());
        }
        parts.join("; ")
    }
}

async fn locate(api: &Api, args: WhereArgs, json: bool) -> Result<(), Failure> {
    if let Some(correlation) = &args.correlation {
        let answer = api.get(&["v1", "messages"], &[("correlation_id", correlation)]).await?;
        #[derive(Deserialize)]
        struct Correlated {
            correlation_id: String,
            messages: Vec<Tracked>,
        }
        return show(&answer, json, |c: Correlated| {
            let mut table = Table::new(&["MESSAGE", "SUBJECT", "TIME", "SUBSCRIPTION", "STATE", "ATTEMPTS>", "DETAIL"]);
            for m in &c.messages {
                let id = m.id.clone().unwrap_or_else(|| format!("{} #{}", m.stream, m.seq));
                if m.subscriptions.is_empty() {
                    table.row(vec![id.clone(), m.subject.clone(), m.time.clone(), "-".into(), "-".into()]);
                }
                for s in &m.subscriptions {
                    table.row(vec![
                        id.clone(),
                        m.subject.clone(),
                        m.time.clone(),
                        s.name.clone(),
                        s.state.clone(),
                        cell(s.attempts),
                        s.detail(),
                    ]);
                }
            }
            format!("correlation {}: {} message(s)\n{}", c.correlation_id, c.messages.len(), table.render())
        });
    }
    let id = args.id.unwrap_or_default();
    let answer = api.get(&["v1", "messages", &id], &[]).await?;
    show(&answer, json, |m: Tracked| {
        let mut out = String::new();
        let mut facts = Table::new(&["", ""]);
        facts.row(vec!["message".into(), cell(m.id)]);
        facts.row(vec!["subject".into(), format!("{} (stream {}, seq {})", m.subject, m.stream, m.seq)]);
        facts.row(vec!["type".into(), cell(m.kind)]);
        facts.row(vec!["publisher".into(), cell(m.publisher)]);
        facts.row(vec!["time".into(), m.time]);
        facts.row(vec!["correlation".into(), cell(m.correlation_id)]);
        // The header row of this two-column list is empty: drop it.
        out.push_str(facts.render().split_once('\n').map_or("", |(_, rest)| rest));
        out.push('\n');
        if m.subscriptions.is_empty() {
            out.push_str("no subscription takes this subject\n");
            return out;
        }
        let mut table = Table::new(&["SUBSCRIPTION", "PARTICIPANT", "MODE", "STATE", "ATTEMPTS>", "DETAIL"]);
        for s in &m.subscriptions {
            table.row(vec![
                s.name.clone(),
                s.participant.clone(),
                s.mode.clone(),
                s.state.clone(),
                cell(s.attempts),
                s.detail(),
            ]);
        }
        out.push_str(&table.render());
        out
    })
}

// --- tail ---

/// Longest silence on an open stream before it counts as dropped: the gateway sends a
/// heartbeat every `limits.sse_heartbeat` (15 s by default).
const TAIL_IDLE: Duration = Duration::from_secs(90);
/// Waits between reconnects: doubling from the first to the last.
const TAIL_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

async fn tail(api: &Api, args: TailArgs, json: bool) -> Result<(), Failure> {
    let segments = ["v1", "subscriptions", args.subscription.as_str(), "events"];
    let mut last_id = args.from.clone();
    let mut seen = 0_u64;
    let mut connected_once = false;
    let mut backoff = TAIL_BACKOFF.0;
    loop {
        match api.open_events(&segments, last_id.as_deref()).await {
            Ok(mut response) => {
                if connected_once {
                    eprintln!("tail: reconnected{}", after(last_id.as_deref()));
                }
                connected_once = true;
                backoff = TAIL_BACKOFF.0;
                let mut parser = sse::Parser::default();
                let why = loop {
                    let chunk = match tokio::time::timeout(TAIL_IDLE, response.chunk()).await {
                        Ok(Ok(Some(chunk))) => chunk,
                        Ok(Ok(None)) => break "the gateway ended the stream".to_owned(),
                        Ok(Err(err)) => break format!("the connection broke ({err})"),
                        Err(_) => break format!("nothing arrived for {} s, not even a heartbeat", TAIL_IDLE.as_secs()),
                    };
                    for event in parser.feed(&chunk) {
                        if event.id.is_some() {
                            last_id.clone_from(&event.id);
                        }
                        if !print(&render_event(&event, json)) {
                            return Ok(());
                        }
                        seen += 1;
                        if args.count.is_some_and(|n| seen >= n) {
                            return Ok(());
                        }
                    }
                };
                eprintln!("tail: {why}; reconnecting{}", after(last_id.as_deref()));
            }
            // Once connected, anything that may pass is waited out: a rolling restart, NATS
            // away for a moment. What will not pass (the token, the name) ends it.
            Err(failure) if connected_once && failure.is_transient() => {
                eprintln!("tail: {failure}; retrying in {} ms", backoff.as_millis());
            }
            Err(failure) => return Err(failure),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(TAIL_BACKOFF.1);
    }
}

fn after(id: Option<&str>) -> String {
    id.map(|id| format!(" after event {id}")).unwrap_or_default()
}

/// One event: `id  event  data` for people; for scripts one JSON object per line, with the
/// data as JSON when it is JSON.
fn render_event(event: &sse::Event, json: bool) -> String {
    if json {
        let data = serde_json::from_str::<Value>(&event.data).unwrap_or_else(|_| Value::String(event.data.clone()));
        format!("{}\n", json!({ "id": event.id, "event": event.event, "data": data }))
    } else {
        format!("{}  {}  {}\n", event.id.as_deref().unwrap_or("-"), event.event, event.data)
    }
}

// --- subs, pause, resume ---

/// A subscription as `GET /v1/subscriptions` describes it (`describe` in
/// src/http/subscriptions.rs). Missing members are absent facts: the gateway could not ask
/// NATS in time (`state: unknown`) or is older than this client.
#[derive(Deserialize)]
struct Subscription {
    name: String,
    #[serde(default)]
    participant: String,
    #[serde(default)]
    mode: String,
    state: String,
    #[serde(default)]
    paused_reason: Option<String>,
    #[serde(default)]
    paused_at: Option<String>,
    #[serde(default)]
    pending: Option<u64>,
    #[serde(default)]
    in_flight: Option<u64>,
    #[serde(default)]
    breaker: Option<String>,
    #[serde(default)]
    dead_letters: Option<u64>,
    #[serde(default)]
    last_error: Option<LastError>,
    #[serde(default)]
    detail: Option<String>,
    /// Key-ordered subscriptions only.
    #[serde(default)]
    ordering: Option<Ordering>,
}

/// `ordering` of a key-ordered subscription: its key and the keys parked now.
#[derive(Deserialize)]
struct Ordering {
    #[serde(default)]
    parked_keys: Vec<ParkedKey>,
}

/// A key whose head message failed (`ParkedKey` in src/delivery/worker/keyed.rs).
#[derive(Deserialize)]
struct ParkedKey {
    key: String,
    message_id: String,
    attempts: u32,
    state: String,
    since: String,
    #[serde(default)]
    waiting: usize,
    #[serde(default)]
    next_attempt: Option<String>,
    last_error: LastError,
}

#[derive(Deserialize)]
struct LastError {
    class: String,
    status: Option<u16>,
    detail: String,
    attempt: u32,
    at: String,
}

/// The status table, then a line for each subscription with something to explain: why it
/// is paused and since when, its last failed attempt.
fn status_table(subs: &[Subscription]) -> String {
    let mut table = Table::new(&[
        "SUBSCRIPTION",
        "PARTICIPANT",
        "MODE",
        "STATE",
        "PENDING>",
        "IN FLIGHT>",
        "BREAKER",
        "DEAD LETTERS>",
        "PARKED KEYS>",
    ]);
    let mut notes = String::new();
    for s in subs {
        table.row(vec![
            s.name.clone(),
            s.participant.clone(),
            s.mode.clone(),
            s.state.clone(),
            cell(s.pending),
            cell(s.in_flight),
            cell(s.breaker.as_deref()),
            cell(s.dead_letters),
            cell(s.ordering.as_ref().map(|o| o.parked_keys.len())),
        ]);
        if let Some(reason) = &s.paused_reason {
            let since = s.paused_at.as_deref().map(|at| format!(" since {at}")).unwrap_or_default();
            notes.push_str(&format!("{}: paused{since}: {reason}\n", s.name));
        }
        if let Some(detail) = &s.detail {
            notes.push_str(&format!("{}: {}: {detail}\n", s.name, s.state));
        }
        if let Some(e) = &s.last_error {
            let status = e.status.map(|s| format!(" {s}")).unwrap_or_default();
            let attempt = if e.attempt > 0 { format!(" (attempt {})", e.attempt) } else { String::new() };
            notes.push_str(&format!(
                "{}: last failed attempt at {}{attempt}: {}{status}: {}\n",
                s.name,
                e.at,
                e.class,
                excerpt(&e.detail, 100)
            ));
        }
        for p in s.ordering.iter().flat_map(|o| &o.parked_keys) {
            let e = &p.last_error;
            let status = e.status.map(|s| format!(" {s}")).unwrap_or_default();
            let next = p.next_attempt.as_deref().map(|at| format!(", next attempt at {at}")).unwrap_or_default();
            notes.push_str(&format!(
                "{}: key {:?} {} since {}: head {} after {} attempt(s){next}, {} waiting behind it: {}{status}: {}\n",
                s.name,
                p.key,
                p.state,
                p.since,
                p.message_id,
                p.attempts,
                p.waiting,
                e.class,
                excerpt(&e.detail, 100)
            ));
        }
    }
    if notes.is_empty() { table.render() } else { format!("{}\n{notes}", table.render()) }
}

async fn subs(api: &Api, args: SubsArgs, json: bool) -> Result<(), Failure> {
    match &args.name {
        Some(name) => {
            let answer = api.get(&["v1", "subscriptions", name], &[]).await?;
            show(&answer, json, |s: Subscription| status_table(&[s]))
        }
        None => {
            let answer = api.get(&["v1", "subscriptions"], &[]).await?;
            #[derive(Deserialize)]
            struct List {
                subscriptions: Vec<Subscription>,
            }
            show(&answer, json, |l: List| {
                if l.subscriptions.is_empty() {
                    "no subscriptions visible to this token\n".to_owned()
                } else {
                    status_table(&l.subscriptions)
                }
            })
        }
    }
}

/// `pause` or `resume`; prints the subscription's state afterwards.
async fn operate(api: &Api, name: &str, action: &str, json: bool) -> Result<(), Failure> {
    let answer = api.post(&["v1", "subscriptions", name, action], &json!({})).await?;
    show(&answer, json, |s: Subscription| status_table(&[s]))
}

// --- dead letters ---

#[derive(Deserialize)]
struct DeadLetter {
    dlq_seq: u64,
    id: String,
    subject: String,
    class: Option<String>,
    status: Option<u16>,
    attempts: Option<u32>,
    dead_lettered_at: String,
    response_excerpt: Option<String>,
}

async fn dead_letters(api: &Api, args: DeadLettersArgs, json: bool) -> Result<(), Failure> {
    let (action, ids) = match (args.replay, args.discard) {
        (Some(ids), None) => ("replay", ids),
        (None, Some(ids)) => ("discard", ids),
        (None, None) if args.all => return Err(Failure::Usage("--all goes with --replay or --discard".into())),
        (None, None) => return list_dead_letters(api, &args.subscription, args.after, args.limit, json).await,
        (Some(_), Some(_)) => return Err(Failure::Usage("--replay or --discard, not both".into())),
    };
    let selection = match (args.all, ids.is_empty()) {
        (true, true) => json!({ "all": true }),
        (false, false) => json!({ "ids": ids }),
        (true, false) => return Err(Failure::Usage(format!("--{action} with ids or with --all, not both"))),
        (false, true) => {
            return Err(Failure::Usage(format!("--{action} needs ids (message ids or dlq-<seq>), or --all")));
        }
    };
    let answer = api.post(&["v1", "subscriptions", &args.subscription, "dead-letters", action], &selection).await?;
    #[derive(Deserialize)]
    struct Settled {
        ids: Vec<String>,
    }
    let done = if action == "replay" { "replayed" } else { "discarded" };
    show(&answer, json, |s: Settled| {
        let mut out = format!("{done} {}", s.ids.len());
        if !s.ids.is_empty() {
            out.push_str(&format!(": {}", s.ids.join(", ")));
        }
        out.push('\n');
        // The API ignores ids that match nothing; say which, so a typo does not pass unseen.
        let missed: Vec<&String> = ids.iter().filter(|id| !s.ids.contains(id) && !id.starts_with("dlq-")).collect();
        if !missed.is_empty() {
            eprintln!(
                "no dead letter of {} matched: {}",
                args.subscription,
                missed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        out
    })
}

async fn list_dead_letters(
    api: &Api,
    subscription: &str,
    after: Option<u64>,
    limit: usize,
    json: bool,
) -> Result<(), Failure> {
    let (after, limit) = (after.unwrap_or(0).to_string(), limit.to_string());
    let answer = api
        .get(&["v1", "subscriptions", subscription, "dead-letters"], &[("after", &after), ("limit", &limit)])
        .await?;
    #[derive(Deserialize)]
    struct Page {
        total: u64,
        dead_letters: Vec<DeadLetter>,
        next: Option<u64>,
    }
    show(&answer, json, |p: Page| {
        let mut table =
            Table::new(&["SEQ>", "ID", "SUBJECT", "CLASS", "STATUS>", "ATTEMPTS>", "DEAD-LETTERED AT", "RESPONSE"]);
        for d in &p.dead_letters {
            table.row(vec![
                d.dlq_seq.to_string(),
                d.id.clone(),
                d.subject.clone(),
                cell(d.class.as_deref()),
                cell(d.status),
                cell(d.attempts),
                d.dead_lettered_at.clone(),
                d.response_excerpt.as_deref().map_or_else(|| "-".to_owned(), |e| excerpt(e, 60)),
            ]);
        }
        let mut out = if p.dead_letters.is_empty() { String::new() } else { table.render() };
        out.push_str(&format!("{} of {} dead letter(s) of {subscription}\n", p.dead_letters.len(), p.total));
        if let Some(next) = p.next {
            out.push_str(&format!("more: --after {next}\n"));
        }
        out
    })
}
