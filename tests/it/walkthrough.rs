//! The simulators' walkthrough of examples/wine-retail/README.md ("## Walkthrough") runs as
//! written: terminal 1's `scripts/dev --fresh` is `magistral dev --fresh` on a copy of the root
//! configuration (the built binary, the test's own ports), terminals 2 to 5 are the simulators
//! started as their blocks say (marked `<!-- doc-test: terminal N -->`), and each step's
//! commands run in order. What a command prints is compared as the other doc tests compare it
//! (docs/doc-tests.md); the lines the doc shows a terminal printing (the plain blocks of
//! `[nav  11:16:00] ...` lines) must be printed by a simulator before the next command runs —
//! waited for, with a deadline — and, at the end, every line a simulator printed must be one the
//! doc shows. The clock of a `[name HH:MM:SS]` stamp, the run's date and local times aside.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::doctest::{Block, Dev, ENDPOINT_PORTS, REPO, compare, console_blocks, free_port, mask, section, squeeze};

const DOC: &str = "examples/wine-retail/README.md";
/// How long a line shown for a terminal may take to appear.
const WAIT: Duration = Duration::from_secs(20);

/// What the walkthrough is made of, in the order of the file.
enum Item<'a> {
    /// A ```console block: commands of the sixth terminal, or (`terminal`) a simulator.
    Console(&'a Block),
    /// A plain block of lines simulators print: (line in the file, text).
    Shown(Vec<(usize, String)>),
    /// `<!-- doc-test: Ctrl-C in terminal N -->`: the prose stops that simulator here.
    Interrupt(u32),
}

fn items<'a>(text: &str, blocks: &'a [Block]) -> Vec<Item<'a>> {
    let lines: Vec<&str> = text.lines().collect();
    let closing = |from: usize| (from + 1..lines.len()).find(|&j| lines[j] == "```").unwrap_or(lines.len());
    let mut items = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(n) = line.strip_prefix("<!-- doc-test: Ctrl-C in terminal ") {
            items.push(Item::Interrupt(n.trim_end_matches("-->").trim().parse().expect("a terminal number")));
        } else if line.starts_with("```") {
            let end = closing(i);
            if line == "```console" {
                items.push(Item::Console(blocks.iter().find(|b| b.line == i + 1).expect("a console block")));
            } else if line == "```" && lines.get(i + 1).is_some_and(|l| l.starts_with('[')) {
                items.push(Item::Shown((i + 1..end).map(|j| (j + 1, lines[j].to_owned())).collect()));
            }
            i = end;
        }
        i += 1;
    }
    items
}

/// Which default port a simulator listens on, by its file.
fn listens(command: &str) -> Option<u16> {
    [("erp.py", 7048), ("shop.py", 7101), ("partner.py", 7401)]
        .into_iter()
        .find(|(file, _)| command.contains(&format!("sim/{file}")))
        .map(|(_, port)| port)
}

/// A line as compared: ports as the doc writes them, ids and times aside, the `[name HH:MM:SS]`
/// stamp's clock, the run's date (the doc's and today's) and a local `dd.mm.yyyy hh:mm` aside.
struct Normal {
    dates: Vec<String>,
}

impl Normal {
    fn new(doc_date: &str) -> Normal {
        let today = |utc: bool| {
            let mut date = Command::new("date");
            if utc {
                date.arg("-u");
            }
            String::from_utf8(date.arg("+%F").output().expect("date").stdout).unwrap().trim().to_owned()
        };
        Normal { dates: vec![doc_date.to_owned(), today(false), today(true)] }
    }

    fn text(&self, text: &str) -> String {
        let mut out = String::new();
        for line in mask(text).lines() {
            let mut line = line.to_owned();
            // `[nav  11:16:00] ...`
            if let (Some(open), Some(close)) = (line.find('['), line.find(']')) {
                let stamp = &line[open + 1..close];
                if open == 0 && stamp.rsplit(' ').next().is_some_and(is_clock) {
                    let name = stamp.split_whitespace().next().unwrap_or_default().to_owned();
                    line = format!("[{name} <hh:mm:ss>]{}", &line[close + 1..]);
                }
            }
            for date in &self.dates {
                line = line.replace(date.as_str(), "<today>");
            }
            line = local_times(&line);
            out.push_str(&line);
            out.push('\n');
        }
        out.trim_end_matches('\n').to_owned()
    }

    fn line(&self, line: &str) -> String {
        squeeze(&self.text(line))
    }
}

fn is_clock(s: &str) -> bool {
    s.len() == 8 && s.bytes().enumerate().all(|(i, b)| if i == 2 || i == 5 { b == b':' } else { b.is_ascii_digit() })
}

/// `28.11.2026 11:16` (what a careless form sends as `created_at`) → `<local time>`.
fn local_times(line: &str) -> String {
    let pattern = |w: &[u8]| {
        w.len() == 16
            && w.iter().enumerate().all(|(i, b)| match i {
                2 | 5 => *b == b'.',
                10 => *b == b' ',
                13 => *b == b':',
                _ => b.is_ascii_digit(),
            })
    };
    let bytes = line.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes.len() - i >= 16 && pattern(&bytes[i..i + 16]) {
            out.push_str("<local time>");
            i += 16;
        } else {
            let ch = line[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// A simulator running in its terminal: every line it prints (stdout and stderr) goes to the
/// shared list, tagged with the terminal.
struct Terminal {
    number: u32,
    child: Child,
}

impl Terminal {
    /// Ctrl-C: SIGINT to its process group, then waits (bounded) for it to end.
    fn interrupt(&mut self) {
        let _ = Command::new("kill").args(["-INT", "--", &format!("-{}", self.child.id())]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.interrupt();
        }
    }
}

/// Every line the simulators printed: (terminal, line as printed, whether a shown line took it).
type Printed = Arc<Mutex<Vec<(u32, String, bool)>>>;

struct Run<'a> {
    dev: &'a Dev,
    /// The test's ports for the example's endpoint ports.
    ports: Vec<u16>,
    normal: Normal,
    printed: Printed,
    /// Shown lines not yet printed: (line in the file, text).
    pending: Vec<(usize, String)>,
    failures: Vec<String>,
}

impl Run<'_> {
    /// The doc's ports as the test's, in a command.
    fn to_test(&self, command: &str) -> String {
        let mut command = self.dev.rewrite(command);
        for (from, to) in ENDPOINT_PORTS.iter().zip(&self.ports) {
            command = command.replace(&format!("127.0.0.1:{from}"), &format!("127.0.0.1:{to}"));
        }
        command
    }

    /// The test's ports as the doc's, in what was printed.
    fn to_doc(&self, text: &str) -> String {
        let mut text = text
            .replace(&format!("127.0.0.1:{}", self.dev.port), "127.0.0.1:8080")
            .replace(&format!("127.0.0.1:{}", self.dev.nats_port), "127.0.0.1:4222");
        for (from, to) in ENDPOINT_PORTS.iter().zip(&self.ports) {
            text = text.replace(&format!("127.0.0.1:{to}"), &format!("127.0.0.1:{from}"));
        }
        text
    }

    /// Starts a terminal's command in the background, from the copied configuration as the
    /// doc's other commands run, on the test's port for the simulator.
    fn start(&self, number: u32, command: &str) -> Terminal {
        let mut command = self.to_test(command);
        if let Some(port) = listens(&command) {
            let test_port = ENDPOINT_PORTS.iter().zip(&self.ports).find(|(p, _)| **p == port).unwrap().1;
            command.push_str(&format!(" --listen 127.0.0.1:{test_port}"));
        }
        let mut child = std::os::unix::process::CommandExt::process_group(
            Command::new("bash").args(["-c", &format!("exec {command} 2>&1")]),
            0,
        )
        .current_dir(self.dev.dir())
        .env("MAGISTRAL_BUS", format!("http://127.0.0.1:{}", self.dev.port))
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a terminal's command");
        let stdout = child.stdout.take().unwrap();
        let printed = self.printed.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                printed.lock().unwrap().push((number, line, false));
            }
        });
        Terminal { number, child }
    }

    /// Waits (bounded) until every pending shown line is one a simulator printed; each printed
    /// line is taken by one shown line only.
    fn settle(&mut self) {
        let deadline = Instant::now() + WAIT;
        let mut pending = std::mem::take(&mut self.pending);
        loop {
            {
                let mut printed = self.printed.lock().unwrap();
                pending.retain(|(_, shown)| {
                    let want = self.normal.line(shown);
                    let found = printed
                        .iter_mut()
                        .find(|(_, line, taken)| !*taken && self.normal.line(&self.to_doc(line)) == want);
                    found.map(|entry| entry.2 = true).is_none()
                });
            }
            if pending.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let printed = self.unshown().join("\n");
                for (line, shown) in pending {
                    self.failures.push(format!(
                        "{DOC}:{line}: shown but not printed in {} s: {shown}\n  printed and not shown so far:\n{printed}",
                        WAIT.as_secs(),
                    ));
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The lines printed that no shown line took, with their terminal.
    fn unshown(&self) -> Vec<String> {
        let printed = self.printed.lock().unwrap();
        printed
            .iter()
            .filter(|(_, _, taken)| !taken)
            .map(|(n, line, _)| format!("  terminal {n}: {}", self.to_doc(line)))
            .collect()
    }
}

/// The gateway's terminal: what `scripts/dev` is given, and the lines shown, which must be in
/// its log in that order (`...` stands for lines left out; a `…` in a line for any text).
fn check_gateway_log(block: &Block, log: &str) -> Result<(), String> {
    let mut log_lines = log.lines();
    for shown in block.steps[0].expected.lines().map(str::trim).filter(|l| !l.is_empty() && *l != "...") {
        let parts: Vec<String> = shown.split('…').map(squeeze).collect();
        let found = log_lines.by_ref().any(|line| {
            let line = squeeze(line);
            let mut at = 0;
            parts.iter().all(|part| match line[at..].find(part.as_str()) {
                Some(i) => {
                    at += i + part.len();
                    true
                }
                None => false,
            })
        });
        if !found {
            return Err(format!("the gateway's log has no line {shown:?} (in this order)"));
        }
    }
    Ok(())
}

/// The walkthrough of examples/wine-retail/README.md, five terminals and all, as written.
#[test]
fn example_simulators_walkthrough_runs_as_shown() {
    let started = Instant::now();
    let text = section(&std::fs::read_to_string(PathBuf::from(REPO).join(DOC)).unwrap(), "## Walkthrough");
    // The date of the run the doc pasted: "pasted as it appeared (YYYY-MM-DD)".
    let doc_date = text
        .split_once("pasted as it appeared (")
        .map(|(_, rest)| rest[..10].to_owned())
        .expect("the walkthrough says the date of the run it shows: \"pasted as it appeared (YYYY-MM-DD)\"");
    let blocks = console_blocks(&text);
    let items = items(&text, &blocks);

    // Terminal 1: the bus, as the doc starts it.
    let Some(Item::Console(first)) = items.first() else { panic!("the walkthrough starts with terminal 1's block") };
    assert_eq!(first.terminal, Some(1), "{DOC}:{}: the first block is terminal 1's", first.line);
    let args: Vec<&str> = first.steps[0]
        .command
        .strip_prefix("scripts/dev")
        .expect("terminal 1 runs scripts/dev")
        .split_whitespace()
        .collect();
    let ports: Vec<u16> = ENDPOINT_PORTS.iter().map(|_| free_port()).collect();
    let dev = Dev::start_with_args(&args, |dir: &Path| {
        let toml = dir.join("magistral.toml");
        let mut config = std::fs::read_to_string(&toml).unwrap();
        for (from, to) in ENDPOINT_PORTS.iter().zip(&ports) {
            config = config.replace(&format!("127.0.0.1:{from}"), &format!("127.0.0.1:{to}"));
        }
        crate::common::write_atomically(&toml, config);
        // The doc's commands name the simulators from the repository root.
        std::os::unix::fs::symlink(PathBuf::from(REPO).join("examples"), dir.join("examples")).unwrap();
    });
    let mut run = Run {
        dev: &dev,
        ports,
        normal: Normal::new(&doc_date),
        printed: Arc::new(Mutex::new(Vec::new())),
        pending: Vec::new(),
        failures: Vec::new(),
    };
    // Declared after `dev`: stopped before it (an open event stream holds the gateway's exit).
    let mut terminals: Vec<Terminal> = Vec::new();
    let show = std::env::var_os("DOC_TEST_SHOW").is_some();
    let mut prelude = String::new();
    let mut ran = 0;

    for item in &items[1..] {
        match item {
            Item::Console(block) if block.skip.is_some() => {
                println!("{DOC}:{}: not run ({})", block.line, block.skip.as_deref().unwrap_or_default());
            }
            Item::Console(block) => {
                // What the doc showed so far has appeared before the next command is typed.
                run.settle();
                if let Some(number) = block.terminal {
                    assert_eq!(block.steps.len(), 1, "{DOC}:{}: a terminal's block has one command", block.line);
                    if let Some(at) = terminals.iter().position(|t| t.number == number) {
                        terminals.remove(at).interrupt();
                    }
                    terminals.push(run.start(number, &block.steps[0].command));
                    let step = &block.steps[0];
                    run.pending
                        .extend(step.expected.lines().enumerate().map(|(n, l)| (step.line + 1 + n, l.to_owned())));
                    ran += 1;
                    continue;
                }
                for step in &block.steps {
                    let actual = run.to_doc(&dev.run(&prelude, &run.to_test(&step.command)));
                    ran += 1;
                    if show {
                        println!("--- {DOC}:{} $ {}\n{actual}", step.line, step.command);
                    }
                    let (expected, actual) = (run.normal.text(&step.expected), run.normal.text(&actual));
                    if let Err(why) = compare(&expected, &actual) {
                        run.failures.push(format!(
                            "{DOC}:{}: $ {}\n  {why}\n  --- shown:\n{}\n  --- printed:\n{}",
                            step.line, step.command, step.expected, actual
                        ));
                    }
                    if step.command.starts_with("export ") {
                        prelude.push_str(&step.command);
                        prelude.push('\n');
                    }
                }
            }
            Item::Shown(lines) => run.pending.extend(lines.iter().cloned()),
            Item::Interrupt(number) => {
                run.settle();
                let at = terminals
                    .iter()
                    .position(|t| t.number == *number)
                    .unwrap_or_else(|| panic!("Ctrl-C in terminal {number}, where nothing runs"));
                terminals.remove(at).interrupt();
            }
        }
    }
    run.settle();
    if let Err(why) = check_gateway_log(first, &run.to_doc(&dev.log())) {
        run.failures.push(format!("{DOC}:{}: {why}\n--- log:\n{}", first.line, dev.log()));
    }
    // Every line a simulator printed is one the doc shows.
    let unshown = run.unshown();
    if !unshown.is_empty() {
        run.failures.push(format!("printed by the simulators, not shown in {DOC}:\n{}", unshown.join("\n")));
    }
    if show {
        for (n, line, _) in run.printed.lock().unwrap().iter() {
            println!("terminal {n}: {}", run.to_doc(line));
        }
    }
    drop(terminals);
    assert!(
        run.failures.is_empty(),
        "{} difference(s) in {DOC}'s walkthrough:\n\n{}",
        run.failures.len(),
        run.failures.join("\n\n")
    );
    println!("{DOC}: walkthrough, {ran} command(s) as shown, in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn the_gateways_log_is_matched_in_order_with_cuts() {
    let block = &console_blocks(
        "```console\n$ scripts/dev --fresh\nmagistral dev: started …/nats-server (pid 1) on 127.0.0.1:4222 (store x)\n...\nINFO b\n```\n",
    )[0];
    let log = "magistral dev: started /a/b/nats-server (pid 25759) on 127.0.0.1:4222 (store x)\n\n2026-12-03T07:39:46.024278Z  INFO a\n2026-12-03T07:39:46.024278Z  INFO b\n";
    assert_eq!(check_gateway_log(block, log), Ok(()));
    assert!(check_gateway_log(block, &log.replace("INFO b", "INFO c")).is_err());
    assert!(check_gateway_log(block, &log.replace("4222", "4223")).is_err());
}
