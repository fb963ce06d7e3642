//! The docs are tested: the ```console blocks of README.md run in order against `magistral dev`
//! started as the quick start starts it (the built binary, a real nats-server it starts itself,
//! a fresh store), and what each command prints is compared with what the README shows —
//! status lines and headers as shown, JSON by shape and value (ids and times aside), text line by
//! line. The convention (how to write a block the next engineer can trust) is docs/doc-tests.md.
//!
//! `DOC_TEST_SHOW=1` prints every command's actual output, to update a doc from a real run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_magistral");
pub(crate) const REPO: &str = env!("CARGO_MANIFEST_DIR");

// ---------------------------------------------------------------------------------------
// Reading the blocks

/// One `$ command` and the output shown after it.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) line: usize,
    pub(crate) command: String,
    pub(crate) expected: String,
}

#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) line: usize,
    pub(crate) steps: Vec<Step>,
    /// `<!-- doc-test: skip REASON -->` right before the fence.
    pub(crate) skip: Option<String>,
    /// `<!-- doc-test: terminal N -->` right before the fence: the block's one command keeps
    /// running in terminal N (a simulator of the example's walkthrough).
    pub(crate) terminal: Option<u32>,
}

/// The ```console blocks of a Markdown text, in order.
pub(crate) fn console_blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i] != "```console" {
            i += 1;
            continue;
        }
        let directive = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix("<!-- doc-test:"))
            .map(|rest| rest.trim_end_matches("-->").trim());
        let skip = directive.and_then(|d| d.strip_prefix("skip")).map(|reason| reason.trim().to_owned());
        let terminal = directive.and_then(|d| d.strip_prefix("terminal ")).map(|n| {
            n.trim().parse().unwrap_or_else(|_| panic!("line {}: `doc-test: terminal N` takes a number", i + 1))
        });
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && lines[end] != "```" {
            end += 1;
        }
        blocks.push(Block { line: i + 1, steps: steps(&lines[start..end], start + 1), skip, terminal });
        i = end + 1;
    }
    blocks
}

fn steps(body: &[&str], first_line: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let Some(first) = body[i].strip_prefix("$ ") else {
            panic!("line {}: a console block starts with `$ `, not {:?}", first_line + i, body[i]);
        };
        let line = first_line + i;
        let mut command = first.to_owned();
        i += 1;
        while needs_more(&command) && i < body.len() {
            command.push('\n');
            command.push_str(body[i]);
            i += 1;
        }
        let mut expected = Vec::new();
        while i < body.len() && !body[i].starts_with("$ ") {
            expected.push(body[i]);
            i += 1;
        }
        steps.push(Step { line, command, expected: expected.join("\n").trim_end().to_owned() });
    }
    steps
}

/// Whether a command goes on over the next line: a trailing `\` or `|`, or an open quote.
fn needs_more(command: &str) -> bool {
    let trimmed = command.trim_end();
    if trimmed.ends_with('\\') || trimmed.ends_with('|') {
        return true;
    }
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut prev = ' ';
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        if escaped {
            escaped = false;
        } else if single {
            single = c != '\'';
        } else if double {
            match c {
                '\\' => escaped = true,
                '"' => double = false,
                _ => {}
            }
        } else {
            match c {
                '\\' => escaped = true,
                '\'' => single = true,
                '"' => double = true,
                // A comment runs to the end of its line.
                '#' if prev.is_whitespace() => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        prev = c;
    }
    single || double
}

// ---------------------------------------------------------------------------------------
// Comparing

/// Matches `template` at the start of `s`: `d` a digit, `h` a lowercase hex digit, `A`/`a` an
/// upper/lowercase letter, anything else itself. Returns the length matched.
fn matches(s: &[u8], template: &str) -> Option<usize> {
    let t = template.as_bytes();
    if s.len() < t.len() {
        return None;
    }
    for (c, p) in s.iter().zip(t) {
        let ok = match p {
            b'd' => c.is_ascii_digit(),
            b'h' => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
            b'A' => c.is_ascii_uppercase(),
            b'a' => c.is_ascii_lowercase(),
            _ => c == p,
        };
        if !ok {
            return None;
        }
    }
    Some(t.len())
}

/// Replaces what differs from run to run — timestamps, UUIDs, HTTP dates, pids, ack and
/// export tokens — with a placeholder.
pub(crate) fn mask(text: &str) -> String {
    let s = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        if let Some(n) = matches(rest, "dddd-dd-ddTdd:dd:dd") {
            let mut n = n;
            if rest.get(n) == Some(&b'.') {
                n += 1;
                while rest.get(n).is_some_and(u8::is_ascii_digit) {
                    n += 1;
                }
            }
            if rest.get(n) == Some(&b'Z') {
                n += 1;
            } else if let Some(z) = rest.get(n..).and_then(|r| matches(r, "+dd:dd").or_else(|| matches(r, "-dd:dd"))) {
                n += z;
            }
            out.push_str("<time>");
            i += n;
        } else if let Some(n) = matches(rest, "hhhhhhhh-hhhh-hhhh-hhhh-hhhhhhhhhhhh") {
            out.push_str("<uuid>");
            i += n;
        } else if let Some(n) = matches(rest, "Aaa, dd Aaa dddd dd:dd:dd GMT") {
            out.push_str("<date>");
            i += n;
        } else if let Some(n) = rest.starts_with(b"(pid ").then_some(5) {
            // (Not `matches`: its `d` is a digit.)
            let digits = rest[n..].iter().take_while(|c| c.is_ascii_digit()).count();
            out.push_str("(pid <n>");
            i += n + digits;
        } else if let Some(n) = matches(rest, "v1.ey").or_else(|| matches(rest, "x1.")) {
            let len = rest.iter().take_while(|c| c.is_ascii_alphanumeric() || b"._-=".contains(c)).count();
            out.push_str(&String::from_utf8_lossy(&rest[..n]));
            out.push_str("<token>");
            i += len.max(n);
        } else {
            let len = std::str::from_utf8(&rest[..rest.len().min(4)])
                .map_or_else(|e| e.valid_up_to().max(1), |t| t.chars().next().map_or(1, char::len_utf8));
            out.push_str(&String::from_utf8_lossy(&rest[..len]));
            i += len;
        }
    }
    out
}

/// Numbers that depend on timing, not on what the doc says: how many attempts a retried
/// delivery has made when it is looked at.
const TIMING_NUMBERS: &[&str] = &["attempts"];

fn compare_json(path: &str, key: &str, expected: &Value, actual: &Value) -> Result<(), String> {
    let at = if path.is_empty() { "(the document)" } else { path };
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let missing: Vec<_> = e.keys().filter(|k| !a.contains_key(*k)).collect();
            let extra: Vec<_> = a.keys().filter(|k| !e.contains_key(*k)).collect();
            if !missing.is_empty() || !extra.is_empty() {
                return Err(format!("{at}: shown but not answered {missing:?}; answered but not shown {extra:?}"));
            }
            for (k, v) in e {
                compare_json(&format!("{path}/{k}"), k, v, &a[k])?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!("{at}: {} item(s) shown, {} answered", e.len(), a.len()));
            }
            for (i, (e, a)) in e.iter().zip(a).enumerate() {
                compare_json(&format!("{path}/{i}"), key, e, a)?;
            }
            Ok(())
        }
        (Value::String(e), Value::String(a)) if mask(e) == mask(a) => Ok(()),
        (Value::Number(_), Value::Number(_)) if TIMING_NUMBERS.contains(&key) => Ok(()),
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("{at}: shown {e}, answered {a}")),
    }
}

/// Collapses runs of spaces (tables are aligned to their widest cell).
pub(crate) fn squeeze(line: &str) -> String {
    mask(line).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A body as shown against the body answered.
fn compare_body(expected: &str, actual: &str) -> Result<(), String> {
    let expected = expected.trim();
    let actual = actual.trim();
    if expected.contains("...") || expected.contains('…') {
        // Trimmed in the doc: every member name shown must be answered.
        for part in expected.split('"').skip(1).step_by(2) {
            let quoted = format!("\"{part}\":");
            if expected.contains(&quoted) && !actual.contains(&quoted) {
                return Err(format!("the member {quoted} shown is not in the answer"));
            }
        }
        return Ok(());
    }
    if let Ok(e) = serde_json::from_str::<Value>(expected) {
        let a = serde_json::from_str::<Value>(actual).map_err(|err| format!("the answer is not JSON ({err})"))?;
        return compare_json("", "", &e, &a);
    }
    let e_lines: Vec<&str> = expected.lines().collect();
    let a_lines: Vec<&str> = actual.lines().collect();
    let all_json = e_lines.iter().all(|l| serde_json::from_str::<Value>(l).is_ok());
    if e_lines.len() != a_lines.len() {
        return Err(format!("{} line(s) shown, {} printed", e_lines.len(), a_lines.len()));
    }
    for (n, (e, a)) in e_lines.iter().zip(&a_lines).enumerate() {
        if all_json {
            let av = serde_json::from_str::<Value>(a).map_err(|err| format!("line {}: not JSON ({err})", n + 1))?;
            compare_json("", "", &serde_json::from_str(e).unwrap(), &av).map_err(|d| format!("line {}: {d}", n + 1))?;
        } else if squeeze(e) != squeeze(a) {
            return Err(format!("line {}: shown {e:?}, printed {a:?}", n + 1));
        }
    }
    Ok(())
}

/// Headers a response always varies in.
const VARYING_HEADERS: &[&str] = &["date", "last-modified"];

/// The output shown after a command against what it printed.
pub(crate) fn compare(expected: &str, actual: &str) -> Result<(), String> {
    if expected.is_empty() {
        return Ok(()); // nothing shown: the command is only run
    }
    let actual = actual.replace("\r\n", "\n");
    if !expected.starts_with("HTTP/") {
        return compare_body(expected, &actual);
    }
    let (e_head, e_body) = expected.split_once("\n\n").unwrap_or((expected, ""));
    let (a_head, a_body) = actual.split_once("\n\n").unwrap_or((&actual, ""));
    let mut e_lines = e_head.lines();
    let mut a_lines = a_head.lines();
    let (e_status, a_status) = (e_lines.next().unwrap_or_default(), a_lines.next().unwrap_or_default());
    if e_status.trim() != a_status.trim() {
        return Err(format!("status: shown {e_status:?}, answered {a_status:?}"));
    }
    let answered: Vec<(String, &str)> = a_lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim()))
        .collect();
    for line in e_lines {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("not a header line: {line:?}"))?;
        let name = name.trim().to_ascii_lowercase();
        let got = answered
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("header {name} shown, not answered"))?;
        if !VARYING_HEADERS.contains(&name.as_str()) && mask(value.trim()) != mask(got) {
            return Err(format!("header {name}: shown {:?}, answered {got:?}", value.trim()));
        }
    }
    if e_body.trim().is_empty() {
        return Ok(());
    }
    compare_body(e_body, a_body)
}

// ---------------------------------------------------------------------------------------
// Running

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `magistral dev` in a copy of the root configuration, as `scripts/dev` runs it at the root
/// (only the ports are the test's own); stopped with SIGTERM, which stops its nats-server.
pub(crate) struct Dev {
    child: Child,
    dir: tempfile::TempDir,
    pub(crate) port: u16,
    pub(crate) nats_port: u16,
}

impl Dev {
    /// `edit` may change the copied configuration first (the test's own endpoint ports).
    fn start_with(edit: impl FnOnce(&Path)) -> Dev {
        Dev::start_with_args(&[], edit)
    }

    /// `magistral dev` with `args` besides the test's ports (`--fresh`, as a doc passes them
    /// to `scripts/dev`).
    pub(crate) fn start_with_args(args: &[&str], edit: impl FnOnce(&Path)) -> Dev {
        // What the README's commands use, besides the built binary.
        for tool in ["bash", "curl", "jq", "python3"] {
            let found = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
            assert!(
                found.is_ok(),
                "the README's commands need {tool} on PATH (scripts/install-doc-tools.sh installs curl and jq)"
            );
        }
        let dir = tempfile::Builder::new().prefix("magistral-doctest-").tempdir().unwrap();
        crate::common::gateway::copy_example(dir.path());
        edit(dir.path());
        let toml = dir.path().join("magistral.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        // A free port can be taken by another test before `magistral dev` binds it: then dev
        // exits saying so, and it is started again on other ports.
        for attempt in 1..=5 {
            let (port, nats_port) = (free_port(), free_port());
            // The test's ports in the configuration too: a `magistral dev` a doc runs reads them there.
            crate::common::write_atomically(
                &toml,
                text.replace("\"127.0.0.1:8080\"", &format!("\"127.0.0.1:{port}\""))
                    .replace("nats://127.0.0.1:4222", &format!("nats://127.0.0.1:{nats_port}")),
            );
            let log_path = dir.path().join("dev.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new(BIN)
                .args(["dev", "--listen", &format!("127.0.0.1:{port}"), "--nats-port", &nats_port.to_string()])
                .args(args)
                .current_dir(dir.path())
                .env("NATS_SERVER_BIN", crate::common::nats::server_bin())
                .env_remove("MAGISTRAL_CONFIG")
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start magistral dev");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let ready = Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/readyz")])
                    .output()
                    .is_ok_and(|o| o.stdout == b"200");
                if ready {
                    return Dev { child, dir, port, nats_port };
                }
                let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
                if let Ok(Some(status)) = child.try_wait() {
                    let raced = log().contains("already in use");
                    assert!(raced && attempt < 5, "magistral dev exited ({status}) before it was ready:\n{}", log());
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    panic!("magistral dev not ready in 60 s:\n{}", log());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        unreachable!("five attempts either returned or failed")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dev.log")).unwrap_or_default()
    }

    /// The command as the doc writes it, pointed at this gateway and its NATS.
    pub(crate) fn rewrite(&self, command: &str) -> String {
        command
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", self.port))
            .replace("127.0.0.1:4222", &format!("127.0.0.1:{}", self.nats_port))
    }

    /// The copied configuration: where the doc's commands run.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn run(&self, prelude: &str, command: &str) -> String {
        let base = format!("http://127.0.0.1:{}", self.port);
        let bin_dir = Path::new(BIN).parent().unwrap();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let script = format!("{prelude}\n{{\n{}\n}} 2>&1", self.rewrite(command));
        // curl at a terminal prints no progress meter; piped, it would (on stderr, which is
        // shown here): a .curlrc of the test's says what a terminal implies.
        let curl_home = self.dir.path().join("curl-home");
        std::fs::create_dir_all(&curl_home).unwrap();
        std::fs::write(curl_home.join(".curlrc"), "no-progress-meter\n").unwrap();
        // A command that does not end (a server a doc starts by mistake) fails alone.
        let mut cmd = Command::new("timeout");
        cmd.args(["60", "bash", "-c", &script]).current_dir(self.dir.path());
        for (key, _) in std::env::vars() {
            if key.starts_with("MAGISTRAL_") {
                cmd.env_remove(key);
            }
        }
        // What the README's prose defines for its error examples.
        let out = cmd
            .env("PATH", path)
            .env("CURL_HOME", &curl_home)
            .env("MAGISTRAL_URL", &base)
            // The example's simulators find the bus there.
            .env("MAGISTRAL_BUS", &base)
            .env("B", &base)
            .env("P", format!("{base}/v1/publish/orders.created"))
            .env("T", "Authorization: Bearer bitrix-demo-token")
            .env("J", "Content-Type: application/json")
            .output()
            .expect("run bash");
        // Shown as the doc's addresses again.
        String::from_utf8_lossy(&out.stdout)
            .replace(&format!("127.0.0.1:{}", self.port), "127.0.0.1:8080")
            // `dev` on a busy port suggests the next one.
            .replace(&format!("127.0.0.1:{}", self.port + 1), "127.0.0.1:8081")
            .replace(&format!("127.0.0.1:{}", self.nats_port), "127.0.0.1:4222")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}

/// The lines of `markdown`'s section under `heading` (to the next heading of its level), the
/// others blank: line numbers stay the file's.
pub(crate) fn section(markdown: &str, heading: &str) -> String {
    let level = heading.split(' ').next().unwrap_or_default();
    let mut inside = false;
    let lines: Vec<&str> = markdown
        .lines()
        .map(|line| {
            if line == heading {
                inside = true;
            } else if line.split(' ').next() == Some(level) {
                inside = false;
            }
            if inside { line } else { "" }
        })
        .collect();
    assert!(lines.contains(&heading), "no {heading:?} heading");
    lines.join("\n")
}

/// Runs every block of `doc` (a path under the repository; only its section under `heading`,
/// when given) in order on `dev`; returns how many commands ran. Panics with every mismatch
/// listed.
fn run_doc_on(doc: &str, heading: Option<&str>, dev: &Dev) -> usize {
    let mut text = std::fs::read_to_string(PathBuf::from(REPO).join(doc)).unwrap();
    if let Some(heading) = heading {
        text = section(&text, heading);
    }
    let blocks = console_blocks(&text);
    assert!(!blocks.is_empty(), "{doc} has no console blocks");
    let show = std::env::var_os("DOC_TEST_SHOW").is_some();
    let mut prelude = String::new();
    let mut failures = Vec::new();
    let mut ran = 0;
    for block in &blocks {
        if let Some(reason) = &block.skip {
            println!("{doc}:{}: not run ({reason})", block.line);
            continue;
        }
        for step in &block.steps {
            let actual = dev.run(&prelude, &step.command);
            ran += 1;
            if show {
                println!("--- {doc}:{} $ {}\n{actual}", step.line, step.command);
            }
            if let Err(why) = compare(&step.expected, &actual) {
                failures.push(format!(
                    "{doc}:{}: $ {}\n  {why}\n  --- shown:\n{}\n  --- printed:\n{}",
                    step.line, step.command, step.expected, actual
                ));
            }
            if step.command.starts_with("export ") {
                prelude.push_str(&step.command);
                prelude.push('\n');
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} command(s) of {doc} answered otherwise:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    ran
}

/// The README as the quick start runs it: `scripts/dev`, and the recording stand-in in a second
/// terminal on the example's endpoint ports (it answers NAV's query).
#[test]
fn readme_console_blocks_answer_as_shown() {
    let standin = Standin::start();
    let dev = Dev::start_with(|dir| standin.rewrite(dir));
    let ran = run_doc_on("README.md", None, &dev);
    println!("README.md: {ran} command(s) answered as shown");
    // The quick start's `>>>` blocks: the first webhook, and a signed one the stand-in verified.
    let shown = standin.assert_printed("README.md", "## Quick start");
    println!("README.md: {shown} delivery block(s) as standin.py printed them");
}

/// The example's endpoint ports: NAV, the shop, the CRM, iSimple.
pub(crate) const ENDPOINT_PORTS: [u16; 4] = [7048, 7101, 7201, 7401];

/// `sim/standin.py` on the test's own stand-ins for the example's endpoint ports, answering
/// 2xx as those systems do; killed when dropped.
struct Standin {
    child: Child,
    ports: Vec<u16>,
    /// What it printed so far.
    printed: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Standin {
    fn start() -> Standin {
        let ports: Vec<u16> = ENDPOINT_PORTS.iter().map(|_| free_port()).collect();
        let list = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let child = Command::new("python3")
            .args(["examples/wine-retail/sim/standin.py", "--ports", &list])
            .current_dir(REPO)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start standin.py");
        let mut child = child;
        let stdout = child.stdout.take().unwrap();
        let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = printed.clone();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        Standin { child, ports, printed }
    }

    /// The deliveries printed so far, each `>>>` block as its lines, with the example's ports.
    fn deliveries(&self) -> Vec<String> {
        let mut text = self.printed.lock().unwrap().clone();
        for (port, test_port) in ENDPOINT_PORTS.iter().zip(&self.ports) {
            text = text.replace(&format!("(port {test_port})"), &format!("(port {port})"));
        }
        // A delivery is its `>>> ` line, the indented lines after it, and the `<<< ` answer
        // line the stand-in prints for what NAV refused or answered.
        let mut blocks: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.starts_with(">>> ") {
                blocks.push(line.to_owned());
            } else if let Some(last) = blocks.last_mut().filter(|_| line.starts_with(' ') || line.starts_with("<<< ")) {
                last.push('\n');
                last.push_str(line);
            }
        }
        blocks
    }

    /// Points the copied configuration's endpoints at the stand-in.
    fn rewrite(&self, dir: &Path) {
        let toml = dir.join("magistral.toml");
        let mut text = std::fs::read_to_string(&toml).unwrap();
        for (from, to) in ENDPOINT_PORTS.iter().zip(&self.ports) {
            text = text.replace(&format!("127.0.0.1:{from}"), &format!("127.0.0.1:{to}"));
        }
        crate::common::write_atomically(&toml, text);
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// examples/wine-retail/README.md's step-by-step with curl, its console blocks in order, on a
/// fresh bus whose endpoints answer (the recording stand-in).
#[test]
fn example_walkthrough_console_blocks_answer_as_shown() {
    let standin = Standin::start();
    let dev = Dev::start_with(|dir| standin.rewrite(dir));
    let doc = "examples/wine-retail/README.md";
    // The simulators' walkthrough before it is tests/it/walkthrough.rs's.
    let ran = run_doc_on(doc, Some("## Step by step with curl"), &dev);
    println!("{doc}: {ran} command(s) answered as shown");
    let shown = standin.assert_printed(doc, "## Step by step with curl");
    println!("{doc}: {shown} delivery block(s) as standin.py printed them");
}

impl Standin {
    /// Each `>>>` block `doc` shows after the heading `from` (not marked as not run) is one the
    /// stand-in printed, within 20 s: the same request line, the headers shown with their
    /// values, the stand-in's notes shown (a verified signature), the body. Returns how many.
    fn assert_printed(&self, doc: &str, from: &str) -> usize {
        let text = std::fs::read_to_string(PathBuf::from(REPO).join(doc)).unwrap();
        let shown = delivery_blocks(&text, from);
        assert!(!shown.is_empty(), "{doc} shows no delivery after {from:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let missing = loop {
            let printed = self.deliveries();
            let missing = shown
                .iter()
                .filter(|(_, block)| !printed.iter().any(|p| shown_in(block, p).is_ok()))
                .map(|(line, block)| {
                    let why: Vec<String> = printed
                        .iter()
                        .filter(|p| p.lines().next() == block.lines().next())
                        .map(|p| shown_in(block, p).unwrap_err())
                        .collect();
                    let requests: Vec<&str> = printed.iter().filter_map(|p| p.lines().next()).collect();
                    format!(
                        "{doc}:{line}:\n{block}\n  printed with that request line: {why:?}\n  all printed: {requests:?}"
                    )
                })
                .collect::<Vec<_>>();
            if missing.is_empty() || Instant::now() > deadline {
                break missing;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        assert!(missing.is_empty(), "deliveries shown but not printed by standin.py:\n\n{}", missing.join("\n\n"));
        shown.len()
    }
}

/// The plain ``` blocks starting with `>>> `, after the heading `from`, not marked
/// `<!-- doc-test: skip ... -->`: (line, text).
fn delivery_blocks(markdown: &str, from: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = markdown.lines().collect();
    let start = lines.iter().position(|l| l.starts_with(from)).unwrap_or(0);
    let mut blocks = Vec::new();
    let mut i = start;
    while i + 1 < lines.len() {
        let skipped = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.starts_with("<!-- doc-test: skip"));
        if lines[i] == "```" && lines[i + 1].starts_with(">>> ") {
            let end = (i + 1..lines.len()).find(|&j| lines[j] == "```").unwrap();
            if !skipped {
                blocks.push((i + 2, lines[i + 1..end].join("\n")));
            }
            i = end + 1;
        } else if lines[i].starts_with("```") {
            i = (i + 1..lines.len()).find(|&j| lines[j] == "```").map_or(lines.len(), |j| j + 1);
        } else {
            i += 1;
        }
    }
    blocks
}

/// A delivery as a doc shows it (request line, some headers, the body, line breaks added, and
/// the `<<< status body` the stand-in answered, when shown) against one standin.py printed: the
/// same request line, each shown header with its value (ids and times aside), the same body, the
/// same answer.
fn shown_in(shown: &str, printed: &str) -> Result<(), String> {
    let (shown, s_answer) = split_answer(shown);
    let (printed, p_answer) = split_answer(printed);
    if let Some(s_answer) = s_answer {
        let p_answer = p_answer.ok_or("no answer printed (<<<)")?;
        let (s_status, s_body) = s_answer.split_once(' ').unwrap_or((&s_answer, ""));
        let (p_status, p_body) = p_answer.split_once(' ').unwrap_or((&p_answer, ""));
        if s_status != p_status {
            return Err(format!("answered {p_status}"));
        }
        compare_body(s_body, p_body).map_err(|why| format!("the answer: {why}"))?;
    }
    let (shown, printed) = (shown.as_str(), printed.as_str());
    let parse = |block: &str| {
        let mut lines = block.lines();
        let first = lines.next().unwrap_or_default().to_owned();
        let (mut headers, mut notes, mut body) = (Vec::new(), Vec::new(), String::new());
        for line in lines {
            let t = line.trim();
            // The stand-in's own findings, e.g. `(signature verified)`.
            if body.is_empty() && t.starts_with('(') && t.ends_with(')') {
                notes.push(t.to_owned());
                continue;
            }
            let is_header = body.is_empty()
                && t.split_once(": ").is_some_and(|(n, _)| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                });
            if is_header {
                headers.push(t.to_owned());
            } else {
                body.push_str(t);
            }
        }
        (first, headers, notes, body)
    };
    let (s_first, s_headers, s_notes, s_body) = parse(shown);
    let (p_first, p_headers, p_notes, p_body) = parse(printed);
    if s_first != p_first {
        return Err(format!("request {p_first:?}"));
    }
    if let Some(note) = s_notes.iter().find(|n| !p_notes.contains(n)) {
        return Err(format!("{note} not printed (printed: {p_notes:?})"));
    }
    for h in &s_headers {
        let name = h.split(':').next().unwrap_or_default();
        let found = p_headers.iter().find(|p| p.split(':').next() == Some(name)).ok_or(format!("no {name}"))?;
        if !VARYING_DELIVERY_HEADERS.contains(&name) && mask(found) != mask(h) {
            return Err(format!("{found:?}"));
        }
    }
    compare_body(&s_body, &p_body)
}

/// A delivery block and its `<<< ` answer (the lines from there on, joined), if it has one.
fn split_answer(block: &str) -> (String, Option<String>) {
    match block.split_once("\n<<< ") {
        Some((delivery, answer)) => {
            (delivery.to_owned(), Some(answer.lines().map(str::trim).collect::<Vec<_>>().join("")))
        }
        None => (block.to_owned(), None),
    }
}

/// Headers of a delivery that differ per message or per attempt.
const VARYING_DELIVERY_HEADERS: &[&str] =
    &["ce-id", "ce-time", "webhook-id", "webhook-timestamp", "webhook-signature", "traceparent"];

// ---------------------------------------------------------------------------------------
// The comparison itself: a doc change that breaks a shown response must fail.

#[test]
fn a_changed_status_header_or_json_value_is_caught() {
    let shown = "HTTP/1.1 201 Created\ncontent-type: application/json\netag: \"2\"\n\n{\"bucket\":\"items\",\"key\":\"W-1\",\"revision\":2}";
    let answered = "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\netag: \"2\"\r\ndate: Wed, 02 Dec 2026 21:00:00 GMT\r\n\r\n{\"bucket\":\"items\",\"key\":\"W-1\",\"revision\":2}";
    assert_eq!(compare(shown, answered), Ok(()));
    assert!(compare(&shown.replace("201 Created", "200 OK"), answered).unwrap_err().starts_with("status"));
    assert!(compare(&shown.replace("\"2\"", "\"1\""), answered).unwrap_err().starts_with("header etag"));
    assert!(compare(&shown.replace("\"revision\":2", "\"revision\":1"), answered).unwrap_err().contains("/revision"));
    assert!(compare(&shown.replace(",\"revision\":2", ""), answered).unwrap_err().contains("not shown"));
    // Ids and times aside; a pull fetch showing a message where none came is caught.
    assert_eq!(
        compare_body(
            r#"{"id":"01a22199-6e01-77ed-b039-ae4424d9a4ec","time":"2026-11-28T11:05:43.443477598Z","seq":1}"#,
            r#"{"id":"01a23858-d067-75f2-8764-fe18a6aa364c","time":"2026-12-02T20:01:14.344Z","seq":1}"#
        ),
        Ok(())
    );
    assert!(compare_body(r#"{"messages":[{"seq":3}]}"#, r#"{"messages":[]}"#).is_err());
    assert!(compare_body("stored BX-1 (stream ORDERS, seq 1)", "stored BX-1 (stream ORDERS, seq 2)").is_err());
    assert_eq!(compare_body("a   b <x>", "a b <x>"), Ok(()));
}

#[test]
fn commands_run_on_over_continuations_and_open_quotes() {
    let blocks = console_blocks(
        "text\n```console\n$ curl -i x \\\n    -d '{\"a\":\n      1}'\nHTTP/1.1 200 OK\n$ echo hi   # the shop's\nhi\n```\n\n<!-- doc-test: skip needs NATS stopped -->\n```console\n$ true\n```\n",
    );
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].steps.len(), 2);
    assert_eq!(blocks[0].steps[0].command, "curl -i x \\\n    -d '{\"a\":\n      1}'");
    assert_eq!(blocks[0].steps[0].expected, "HTTP/1.1 200 OK");
    assert_eq!(blocks[0].steps[1].expected, "hi");
    assert_eq!(blocks[1].skip.as_deref(), Some("needs NATS stopped"));
}

#[test]
fn a_delivery_answered_otherwise_than_shown_is_caught() {
    let printed =
        ">>> POST /BC/x (port 7048)\n    ce-id: BX-1\n    {\"a\":1}\n<<< 400 {\"error\": {\"code\": \"NotFound\"}}";
    let shown = ">>> POST /BC/x (port 7048)\n    ce-id: BX-1\n    {\"a\":1}\n<<< 400 {\"error\":\n      {\"code\":\"NotFound\"}}";
    assert_eq!(shown_in(shown, printed), Ok(()));
    assert_eq!(shown_in(&shown.replace("<<< 400", "<<< 201"), printed), Err("answered 400".to_owned()));
    assert!(shown_in(&shown.replace("NotFound", "Other"), printed).unwrap_err().starts_with("the answer"));
    assert!(shown_in(shown, printed.split("\n<<<").next().unwrap()).is_err());
    // Without an answer shown, only the delivery is compared.
    assert_eq!(shown_in(shown.split("\n<<<").next().unwrap(), printed), Ok(()));
    // A stand-in's finding shown, e.g. a verified signature, must have been printed.
    let signed = ">>> POST /c (port 7201)\n    webhook-signature: v1,x\n    (signature verified)\n    {\"a\":1}";
    assert_eq!(shown_in(signed, signed), Ok(()));
    let failed = signed.replace("(signature verified)", "(signature DOES NOT VERIFY)");
    assert!(shown_in(signed, &failed).unwrap_err().contains("(signature verified) not printed"));
    assert_eq!(shown_in(&signed.replace("    (signature verified)\n", ""), &failed), Ok(()));
}
