//! `bench run`: starts each server, runs the load generators against it and prints the table.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::procfs;
use crate::{Flags, flag};

/// The table's columns: spool's two shells, then the peers, the floor last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Col {
    Smol,
    Std,
    Fast,
    TokioWs,
    AsyncTung,
    Node,
    TokioBcast,
    Tung,
    Mio,
}

const COLS: [(Col, &str); 9] = [
    (Col::Smol, "spool-smol"),
    (Col::Std, "spool-std"),
    (Col::Fast, "fastwebsockets"),
    (Col::TokioWs, "tokio-websockets"),
    (Col::AsyncTung, "async-tungstenite (smol)"),
    (Col::Node, "Node ws"),
    (Col::TokioBcast, "tokio broadcast"),
    (Col::Tung, "tungstenite"),
    (Col::Mio, "bare mio"),
];

fn col_name(col: Col) -> &'static str {
    COLS.iter().find(|(c, _)| *c == col).map_or("?", |(_, n)| n)
}

fn is_spool(col: Col) -> bool {
    matches!(col, Col::Smol | Col::Std)
}

/// Which way a figure is better.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Lower,
    Higher,
}

/// One row: a figure per column, or a text.
struct Row {
    label: String,
    better: Better,
    values: BTreeMap<Col, f64>,
    texts: BTreeMap<Col, String>,
    /// Figures measured while other processes took the machine: printed with a `*`.
    starved: std::collections::BTreeSet<Col>,
    target: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Table {
    fn row(&mut self, label: &str, better: Better) -> &mut Row {
        if let Some(i) = self.rows.iter().position(|r| r.label == label) {
            return &mut self.rows[i];
        }
        self.rows.push(Row {
            label: label.to_string(),
            better,
            values: BTreeMap::new(),
            texts: BTreeMap::new(),
            starved: Default::default(),
            target: String::new(),
            met: None,
        });
        self.rows.last_mut().expect("pushed")
    }

    fn set(&mut self, label: &str, better: Better, col: Col, value: f64) {
        self.row(label, better).values.insert(col, value);
    }

    fn get(&self, label: &str, col: Col) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.label == label)
            .and_then(|r| r.values.get(&col).copied())
    }

    /// Sets a row's target and verdict; no verdict when a figure of the row was starved.
    fn target(&mut self, label: &str, target: &str, met: Option<bool>) {
        if let Some(r) = self.rows.iter_mut().find(|r| r.label == label) {
            r.target = target.to_string();
            r.met = if r.starved.is_empty() { met } else { None };
        }
    }
}

fn best(values: impl Iterator<Item = f64>, better: Better) -> Option<f64> {
    values.fold(None, |acc, v| match (acc, better) {
        (None, _) => Some(v),
        (Some(a), Better::Lower) => Some(a.min(v)),
        (Some(a), Better::Higher) => Some(a.max(v)),
    })
}

fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", v);
        let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn print_table(table: &Table) {
    let mut header = vec!["figure".to_string()];
    header.extend(COLS.iter().map(|(_, n)| n.to_string()));
    header.extend(
        [
            "spool ÷ best peer",
            "spool ÷ bare mio",
            "target (issue 12)",
            "met",
        ]
        .map(String::from),
    );
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for r in &table.rows {
        let mut cells = vec![r.label.clone()];
        for (col, _) in COLS {
            cells.push(match (r.values.get(&col), r.texts.get(&col)) {
                (_, Some(t)) => t.clone(),
                (Some(v), None) if r.starved.contains(&col) => format!("{}*", fmt(*v)),
                (Some(v), None) => fmt(*v),
                (None, None) => "-".to_string(),
            });
        }
        let spool = best(
            r.values
                .iter()
                .filter(|(c, _)| is_spool(**c))
                .map(|(_, v)| *v),
            r.better,
        );
        let peer = best(
            r.values
                .iter()
                .filter(|(c, _)| !is_spool(**c) && **c != Col::Mio)
                .map(|(_, v)| *v),
            r.better,
        );
        let mio = r.values.get(&Col::Mio).copied();
        let ratio = |other: Option<f64>| match (spool, other) {
            (Some(s), Some(o)) if o != 0.0 => format!("{:.2}", s / o),
            _ => "-".to_string(),
        };
        cells.push(ratio(peer));
        cells.push(ratio(mio));
        cells.push(if r.target.is_empty() {
            "-".to_string()
        } else {
            r.target.clone()
        });
        cells.push(
            match r.met {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None if !r.starved.is_empty() && !r.target.is_empty() => "? (*)",
                None => "-",
            }
            .to_string(),
        );
        println!("| {} |", cells.join(" | "));
    }
    for n in &table.notes {
        println!("{n}");
    }
    if table.rows.iter().any(|r| !r.starved.is_empty()) {
        println!(
            "- *: in at least one run of this figure neither the server nor the load generator \
             had 70% of its core: other processes took the machine, and the figure (above all \
             round trips/s and p99) says more about them than about the server."
        );
    }
    println!(
        "- write/writev calls are /proc/PID/io's syscw, which does not count send(2): \
         servers that send show '-'."
    );
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A child killed (SIGKILL) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server to measure: its column and its command (`{port}` stands for the port).
struct Spec {
    col: Col,
    program: PathBuf,
    args: Vec<String>,
}

impl Spec {
    fn new(col: Col, program: impl Into<PathBuf>, args: &[&str]) -> Spec {
        Spec {
            col,
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }
}

struct Env {
    bin: PathBuf,
    node_dir: PathBuf,
    logs: PathBuf,
    quick: bool,
    runs: usize,
    process: u32,
}

impl Env {
    /// A distinct load process number: each gets its own source addresses.
    fn next_process(&mut self) -> u32 {
        self.process = (self.process + 1) % 240;
        self.process
    }

    fn me(&self) -> PathBuf {
        self.bin.join("bench")
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Starts a server pinned to core 0 and waits until it accepts connections.
fn start_server(env: &Env, spec: &Spec, tag: &str) -> Result<(Proc, u16), String> {
    let port = free_port()?;
    let log = env.logs.join(format!(
        "{}-{tag}.log",
        col_name(spec.col).replace([' ', '(', ')'], "")
    ));
    let log = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let args: Vec<String> = (spec.args.iter())
        .map(|a| a.replace("{port}", &port.to_string()))
        .collect();
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(&spec.program)
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.program.display()))?;
    let mut proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        if let Ok(Some(status)) = proc.0.try_wait() {
            return Err(format!(
                "{} exited ({status}) before listening",
                col_name(spec.col)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("{} not listening after 15 s", col_name(spec.col)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok((proc, port))
}

/// Runs this program with `args` pinned to core 1; returns its last stdout line.
fn run_load(env: &Env, args: &[String], timeout: Duration) -> Result<String, String> {
    let child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(env.me())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the load: {e}"))?;
    let mut proc = Proc(child);
    let deadline = Instant::now() + timeout;
    loop {
        match proc.0.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() > deadline => {
                return Err(format!("load {args:?} still running after {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    if let Some(mut s) = proc.0.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = proc.0.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    out.lines()
        .last()
        .map(str::to_string)
        .ok_or_else(|| format!("the load printed nothing: {}", err.trim()))
}

/// Runs the load `command` with `flags` against the server on `port` (its process `pid`),
/// and gives the figures of its result line; a failure becomes a note under the table (`what`
/// names the run there) and `None`.
fn measure(
    env: &mut Env,
    table: &mut Table,
    what: &str,
    command: &str,
    flags: &[(&str, String)],
    (port, pid): (u16, u32),
    timeout: Duration,
) -> Option<BTreeMap<String, f64>> {
    let mut args = vec![
        command.to_string(),
        "--addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    for (name, value) in flags {
        args.push(format!("--{name}"));
        args.push(value.clone());
    }
    args.extend([
        "--pid".into(),
        pid.to_string(),
        "--process".into(),
        env.next_process().to_string(),
    ]);
    match run_load(env, &args, timeout) {
        Ok(line) => {
            eprintln!("  {what} {line}");
            Some(values(&line))
        }
        Err(e) => {
            table.notes.push(format!("- {what}: {e}"));
            None
        }
    }
}

/// `key=value` pairs of a result line.
fn values(line: &str) -> BTreeMap<String, f64> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

// ---------------------------------------------------------------------------------------------

pub fn run(flags: &Flags) -> Result<(), String> {
    let quick: bool = flag(flags, "quick", false)?;
    let only: String = flag(flags, "only", "echo,fanout,memory,scale,codec".to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = me.parent().expect("a directory").to_path_buf();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf();
    let logs = bin.join("bench-logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let mut env = Env {
        bin: bin.clone(),
        node_dir: flag(flags, "node-dir", root.join("tests/node"))?,
        logs,
        quick,
        runs: flag(flags, "runs", if quick { 1 } else { 3 })?,
        process: 0,
    };
    let mut table = Table::default();
    let sections: Vec<&str> = only.split(',').map(str::trim).collect();
    let started = Instant::now();
    // Socket-heavy sections last but one (scale reads the kernel's memory before the others
    // leave sockets behind); the codec (no sockets) last.
    for section in ["echo", "scale", "memory", "fanout", "codec"] {
        if !sections.contains(&section) {
            continue;
        }
        eprintln!(
            "bench: {section} ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        );
        let result = match section {
            "echo" => echo(&mut env, &mut table),
            "fanout" => fanout(&mut env, &mut table),
            "memory" => memory(&mut env, &mut table, flag(flags, "memory-conns", 19_000)?),
            "scale" => scale(&mut env, &mut table, flag(flags, "scale-conns", 19_000)?),
            _ => codec(&env, &root, &mut table),
        };
        if let Err(e) = result {
            eprintln!("bench: {section}: {e}");
            table.notes.push(format!("- {section}: failed: {e}"));
        }
    }
    targets(&mut table);
    table.notes.push(format!(
        "- {} mode, {} run(s) per echo and fan-out figure (median); took {:.0} s. Server pinned to core 0, \
         load generator (spool-core) to core 1.",
        if quick { "quick" } else { "full" },
        env.runs,
        started.elapsed().as_secs_f64()
    ));
    println!();
    print_table(&table);
    Ok(())
}

fn echo_specs(env: &Env) -> Vec<Spec> {
    let b = |name: &str| env.bin.join(name);
    let spool = b("spool");
    vec![
        Spec::new(
            Col::Smol,
            &spool,
            &[
                "echo",
                "--port",
                "{port}",
                "--shell",
                "smol",
                "--no-deflate",
            ],
        ),
        Spec::new(
            Col::Std,
            &spool,
            &["echo", "--port", "{port}", "--shell", "std", "--no-deflate"],
        ),
        Spec::new(Col::Fast, b("peer_fastwebsockets"), &["{port}"]),
        Spec::new(Col::TokioWs, b("peer_tokio_websockets"), &["{port}"]),
        Spec::new(Col::AsyncTung, b("peer_async_tungstenite"), &["{port}"]),
        Spec::new(
            Col::Node,
            "node",
            &[
                env.node_dir
                    .join("bench_echo_server.js")
                    .to_str()
                    .unwrap_or(""),
                "{port}",
            ],
        ),
        Spec::new(Col::Mio, b("peer_mio"), &["{port}"]),
    ]
}

fn echo(env: &mut Env, table: &mut Table) -> Result<(), String> {
    let (secs, warmup) = if env.quick { (2.0, 0.5) } else { (5.0, 1.0) };
    let specs = echo_specs(env);
    let size_name = |len: usize| if len == 1024 { "1 KiB" } else { "16 B" };
    // Per (server, message size): each figure's values over the runs, and whether any run was
    // starved of CPU.
    type Figures = BTreeMap<&'static str, Vec<f64>>;
    let mut figures: BTreeMap<(usize, usize), Figures> = BTreeMap::new();
    let mut starved: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    // Round robin: run r of every server before run r + 1 of any, so that a machine whose speed
    // drifts during the section moves every column alike and the ratios stay fair. Each run
    // starts at a different server and swaps the sizes, so that no server is always the one
    // that follows another's exit (in a run at a70204a spool-smol, always first, was behind
    // fastwebsockets in all six of its runs, yet level with spool-std when the two alone ran
    // in turn).
    for run in 0..env.runs {
        for index in rotated(specs.len(), run, env.runs) {
            let spec = &specs[index];
            let sizes = if run % 2 == 0 {
                [1024usize, 16]
            } else {
                [16, 1024]
            };
            for len in sizes {
                let size = size_name(len);
                let (server, port) = start_server(env, spec, &format!("echo-{len}-{run}"))?;
                let flags = [
                    ("conns", "100".to_string()),
                    ("len", len.to_string()),
                    ("secs", secs.to_string()),
                    ("warmup", warmup.to_string()),
                ];
                let what = format!("echo {size} on {}", col_name(spec.col));
                let target = (port, server.0.id());
                let timeout = Duration::from_secs(60);
                let Some(v) = measure(env, table, &what, "echo", &flags, target, timeout) else {
                    continue;
                };
                let mine = figures.entry((index, len)).or_default();
                for key in [
                    "rtps",
                    "cpu_us_per_rt",
                    "user_us_per_rt",
                    "p50_us",
                    "p99_us",
                    "ctxsw_per_s",
                    "writes_per_rt",
                ] {
                    if let Some(x) = v.get(key) {
                        mine.entry(key).or_default().push(*x);
                    }
                }
                // A closed loop keeps one side busy; when neither is, others took the cores.
                let pct = |k: &str| v.get(k).copied().unwrap_or(0.0);
                *starved.entry((index, len)).or_default() |=
                    pct("server_cpu_pct") < 70.0 && pct("load_cpu_pct") < 70.0;
                if v.get("load_cpu_pct").is_some_and(|p| *p > 95.0) {
                    table.notes.push(format!(
                        "- echo {size} on {}: the load generator used {:.0}% of its core",
                        col_name(spec.col),
                        v["load_cpu_pct"]
                    ));
                }
            }
        }
    }
    // Rows in the order the table has always had: server by server, 1 KiB before 16 B.
    let measured = (0..specs.len()).flat_map(|index| [(index, 1024), (index, 16)]);
    for (index, len) in measured {
        let Some(mut figures) = figures.remove(&(index, len)) else {
            continue;
        };
        let col = specs[index].col;
        let size = size_name(len);
        let starved = starved.get(&(index, len)).copied().unwrap_or(false);
        let rows = [
            (
                "rtps",
                format!("echo {size}: round trips/s"),
                Better::Higher,
            ),
            (
                "cpu_us_per_rt",
                format!("echo {size}: server CPU per round trip (us)"),
                Better::Lower,
            ),
            (
                "user_us_per_rt",
                format!("echo {size}: of which user space (us)"),
                Better::Lower,
            ),
            (
                "p50_us",
                format!("echo {size}: p50 latency (us)"),
                Better::Lower,
            ),
            (
                "p99_us",
                format!("echo {size}: p99 latency (us)"),
                Better::Lower,
            ),
            (
                "ctxsw_per_s",
                format!("echo {size}: server context switches/s"),
                Better::Lower,
            ),
            (
                "writes_per_rt",
                format!("echo {size}: server write/writev calls per round trip"),
                Better::Lower,
            ),
        ];
        for (key, label, better) in rows {
            if let Some(v) = figures.remove(key) {
                let v = median(v);
                // /proc/PID/io counts write(2) and writev(2), not send(2): a server that
                // sends shows none, which is no figure.
                if key == "writes_per_rt" && v == 0.0 {
                    continue;
                }
                table.set(&label, better, col, v);
                if starved {
                    table.row(&label, better).starved.insert(col);
                }
            }
        }
    }
    Ok(())
}

fn fanout(env: &mut Env, table: &mut Table) -> Result<(), String> {
    let spool = env.bin.join("spool");
    let specs = vec![
        Spec::new(Col::Smol, &spool, &["serve", "--port", "{port}"]),
        Spec::new(
            Col::Std,
            &spool,
            &["serve", "--port", "{port}", "--shell", "std"],
        ),
        Spec::new(
            Col::Node,
            "node",
            &[
                env.node_dir
                    .join("bench_fanout_server.js")
                    .to_str()
                    .unwrap_or(""),
                "{port}",
            ],
        ),
        Spec::new(
            Col::TokioBcast,
            env.bin.join("peer_tokio_fanout"),
            &["{port}"],
        ),
        // The floor: one write a subscriber straight from the loop, nothing else.
        Spec::new(Col::Mio, env.bin.join("peer_mio_fanout"), &["{port}"]),
    ];
    let subs = if env.quick { 5_000 } else { 10_000 };
    let fast_broadcasts = if env.quick { 50 } else { 100 };
    let paced_broadcasts = if env.quick { 5 } else { 10 };
    table.notes.push(format!(
        "- fan-out: {subs} subscribers of one topic, {fast_broadcasts} broadcasts as fast as \
         the publisher can send them, then {paced_broadcasts} at one a second; each {} time(s), \
         round robin across the servers: the median, and the worst run's missing deliveries.",
        env.runs
    ));
    // Both modes move from run to run (the fast one by a third, with how many frames a
    // connection finds waiting and so writes at once; the paced p99 by a fifth, with the
    // kernel's cost of a loopback send), so each runs like the echo figures: round robin
    // across the servers, and the median is kept.
    let fast = fanout_rounds(env, table, &specs, "fast", subs, fast_broadcasts, 0.0)?;
    for (index, mut figures) in fast {
        let col = specs[index].col;
        let mut take = |key: &str| figures.remove(key).unwrap_or_default();
        table.set(
            "fan-out, as fast as offered: deliveries/s",
            Better::Higher,
            col,
            median(take("dps")),
        );
        table.set(
            "fan-out, as fast as offered: missing deliveries",
            Better::Lower,
            col,
            worst(&take("missing")),
        );
        table.set(
            "fan-out, as fast as offered: server CPU per delivery (us)",
            Better::Lower,
            col,
            median(take("cpu_us_per_delivery")),
        );
        table.set(
            "fan-out, as fast as offered: of which user space (us)",
            Better::Lower,
            col,
            median(take("user_us_per_delivery")),
        );
        let writes = median(take("writes_per_delivery"));
        if writes > 0.0 {
            table.set(
                "fan-out, as fast as offered: server write/writev calls per delivery",
                Better::Lower,
                col,
                writes,
            );
        }
    }
    let paced = fanout_rounds(env, table, &specs, "paced", subs, paced_broadcasts, 1.0)?;
    for (index, mut figures) in paced {
        let col = specs[index].col;
        let mut take = |key: &str| figures.remove(key).unwrap_or_default();
        table.set(
            "fan-out, 1 broadcast/s: p99 latency (ms)",
            Better::Lower,
            col,
            median(take("p99_ms")),
        );
        table.set(
            "fan-out, 1 broadcast/s: server CPU per delivery (us)",
            Better::Lower,
            col,
            median(take("cpu_us_per_delivery")),
        );
        table.set(
            "fan-out, 1 broadcast/s: of which user space (us)",
            Better::Lower,
            col,
            median(take("user_us_per_delivery")),
        );
        table.set(
            "fan-out, 1 broadcast/s: missing deliveries",
            Better::Lower,
            col,
            worst(&take("missing")),
        );
    }
    Ok(())
}

/// One run was missing this many deliveries at worst; NaN when a run gave no figure (a run
/// that lost a delivery is a loss, whatever the others did).
fn worst(missing: &[f64]) -> f64 {
    if missing.iter().any(|m| m.is_nan()) {
        f64::NAN
    } else {
        missing.iter().copied().fold(0.0, f64::max)
    }
}

/// The order of `n` servers in run `run` of `runs`: all of them, starting a share of the way
/// round for each run (0, 2, 4 of 7 for three runs), so that each takes different places.
fn rotated(n: usize, run: usize, runs: usize) -> impl Iterator<Item = usize> {
    let start = if n == 0 { 0 } else { run * n / runs.max(1) % n };
    (0..n).map(move |i| (start + i) % n)
}

/// Runs one fan-out mode `env.runs` times, round robin across `specs`: per server (by index),
/// each figure's values over the runs.
fn fanout_rounds(
    env: &mut Env,
    table: &mut Table,
    specs: &[Spec],
    mode: &str,
    subs: usize,
    broadcasts: usize,
    rate: f64,
) -> Result<BTreeMap<usize, BTreeMap<&'static str, Vec<f64>>>, String> {
    let mut figures: BTreeMap<usize, BTreeMap<&'static str, Vec<f64>>> = BTreeMap::new();
    for run in 0..env.runs {
        for index in rotated(specs.len(), run, env.runs) {
            let spec = &specs[index];
            let Some(v) = fanout_once(env, table, spec, mode, subs, broadcasts, rate)? else {
                continue;
            };
            let mine = figures.entry(index).or_default();
            for key in [
                "dps",
                "missing",
                "p99_ms",
                "cpu_us_per_delivery",
                "user_us_per_delivery",
                "writes_per_delivery",
            ] {
                mine.entry(key)
                    .or_default()
                    .push(v.get(key).copied().unwrap_or(f64::NAN));
            }
            if rate <= 0.0 && v.get("load_cpu_pct").is_some_and(|p| *p > 95.0) {
                table.notes.push(format!(
                    "- fan-out {mode} on {}: the load generator used {:.0}% of its core \
                     (the rate may be the generator's)",
                    col_name(spec.col),
                    v["load_cpu_pct"]
                ));
            }
        }
    }
    Ok(figures)
}

/// One fan-out run against a fresh server: the load generator's figures, or `None` (with a
/// note in the table) when the run failed.
fn fanout_once(
    env: &mut Env,
    table: &mut Table,
    spec: &Spec,
    mode: &str,
    subs: usize,
    broadcasts: usize,
    rate: f64,
) -> Result<Option<BTreeMap<String, f64>>, String> {
    let (server, port) = start_server(env, spec, &format!("fanout-{mode}"))?;
    let flags = [
        ("subs", subs.to_string()),
        ("broadcasts", broadcasts.to_string()),
        ("rate", rate.to_string()),
    ];
    let what = format!("fan-out {mode} on {}", col_name(spec.col));
    let target = (port, server.0.id());
    let timeout = Duration::from_secs(240);
    let figures = measure(env, table, &what, "fanout", &flags, target, timeout);
    drop(server);
    Ok(figures)
}

/// Idle connections held by client processes (at most 9,000 each) against a running server.
struct Holders {
    procs: Vec<Proc>,
    lines: mpsc::Receiver<String>,
    connected: u64,
    failed: u64,
}

fn hold(env: &mut Env, port: u16, n: usize) -> Result<Holders, String> {
    let processes = n.div_ceil(9_000).max(1);
    let (tx, rx) = mpsc::channel();
    let mut procs = Vec::new();
    for p in 0..processes {
        let count = n / processes + usize::from(p < n % processes);
        let mut child = Proc(
            Command::new("taskset")
                .args(["-c", "1"])
                .arg(env.me())
                .args(["hold", "--addr", &format!("127.0.0.1:{port}")])
                .args(["--count", &count.to_string()])
                .args(["--process", &env.next_process().to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start a holder: {e}"))?,
        );
        let out = child.0.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        procs.push(child);
    }
    let mut h = Holders {
        procs,
        lines: rx,
        connected: 0,
        failed: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(200);
    let mut ready = 0;
    while ready < processes {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = h
            .lines
            .recv_timeout(left)
            .map_err(|_| format!("{ready} of {processes} holders ready after 200 s"))?;
        if let Some(rest) = line.strip_prefix("ready ") {
            let mut it = rest.split(' ').map(|v| v.parse::<u64>().unwrap_or(0));
            h.connected += it.next().unwrap_or(0);
            h.failed += it.next().unwrap_or(0);
            ready += 1;
        }
    }
    Ok(h)
}

impl Holders {
    /// Closes the holders' stdin; returns the pings they answered.
    fn finish(mut self) -> u64 {
        for p in &mut self.procs {
            drop(p.0.stdin.take());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut done, mut pings) = (0, 0u64);
        while done < self.procs.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            if let Some(rest) = line.strip_prefix("done ") {
                pings += values(rest).get("pings").copied().unwrap_or(0.0) as u64;
                done += 1;
            }
        }
        pings
    }
}

fn memory(env: &mut Env, table: &mut Table, n: usize) -> Result<(), String> {
    let n = if env.quick { n.min(10_000) } else { n };
    let settle = Duration::from_millis(if env.quick { 1_000 } else { 3_000 });
    let label = format!("memory: server RSS per idle connection, {n} held (KiB)");
    for spec in echo_specs(env) {
        let (server, port) = start_server(env, &spec, "memory")?;
        let pid = server.0.id();
        let before = procfs::rss_kib(pid).unwrap_or(0);
        let holders = match hold(env, port, n) {
            Ok(h) => h,
            Err(e) => {
                table
                    .notes
                    .push(format!("- memory on {}: {e}", col_name(spec.col)));
                continue;
            }
        };
        std::thread::sleep(settle);
        let alive = procfs::rss_kib(pid).is_some();
        let after = procfs::rss_kib(pid).unwrap_or(0);
        let connected = holders.connected;
        let failed = holders.failed;
        drop(holders.procs);
        drop(server);
        eprintln!(
            "  {}: {connected} up, {failed} failed, RSS {before} -> {after} KiB",
            col_name(spec.col)
        );
        if !alive {
            table
                .row(&label, Better::Lower)
                .texts
                .insert(spec.col, "died".into());
            continue;
        }
        if connected > 0 {
            let per = after.saturating_sub(before) as f64 / connected as f64;
            table.set(&label, Better::Lower, spec.col, per);
        }
        if failed > 0 {
            table.notes.push(format!(
                "- memory on {}: {connected} connections held, {failed} failed",
                col_name(spec.col)
            ));
        }
    }
    Ok(())
}

fn scale(env: &mut Env, table: &mut Table, n: usize) -> Result<(), String> {
    let n = if env.quick { n.min(10_000) } else { n };
    let window = Duration::from_secs(if env.quick { 3 } else { 5 });
    let spool = env.bin.join("spool");
    let mut projections = Vec::new();
    for (col, shell) in [(Col::Smol, "smol"), (Col::Std, "std")] {
        let spec = Spec::new(
            col,
            &spool,
            &[
                "echo",
                "--port",
                "{port}",
                "--shell",
                shell,
                "--no-deflate",
                "--ping-interval-ms",
                "1000",
            ],
        );
        let (server, port) = start_server(env, &spec, "scale")?;
        let pid = server.0.id();
        let (rss0, k0) = (procfs::rss_kib(pid).unwrap_or(0), procfs::kernel());
        let holders = hold(env, port, n)?;
        // Let every connection see a ping or two before measuring.
        std::thread::sleep(Duration::from_millis(2_000));
        let (rss1, k1) = (procfs::rss_kib(pid).unwrap_or(0), procfs::kernel());
        let cpu0 = procfs::cpu(pid);
        let t0 = Instant::now();
        std::thread::sleep(window);
        let cpu = procfs::cpu(pid).saturating_sub(cpu0).as_secs_f64();
        let secs = t0.elapsed().as_secs_f64();
        let alive = procfs::rss_kib(pid).is_some();
        let connected = holders.connected.max(1) as f64;
        let pings = holders.finish();
        drop(server);
        if !alive {
            table
                .notes
                .push(format!("- scale on {}: the server died", col_name(col)));
            continue;
        }
        let rss_per = rss1.saturating_sub(rss0) as f64 / connected;
        let slab_per = k1.slab_kib.saturating_sub(k0.slab_kib) as f64 / connected;
        let tcp_per = k1.tcp_mem_kib.saturating_sub(k0.tcp_mem_kib) as f64 / connected;
        // The server's CPU for pings: one ping a second to every connection.
        let cpu_per_conn_us = cpu * 1e6 / secs / connected;
        eprintln!(
            "  {}: {connected} up, RSS {rss0} -> {rss1} KiB, slab {} -> {} KiB, TCP mem {} -> {} \
             KiB, TCP sockets {} -> {}, {:.2} s CPU over {secs:.1} s, {pings} pings answered",
            col_name(col),
            k0.slab_kib,
            k1.slab_kib,
            k0.tcp_mem_kib,
            k1.tcp_mem_kib,
            k0.tcp_inuse,
            k1.tcp_inuse,
            cpu
        );
        let held = format!("{}", connected as u64);
        table.set(
            &format!("scale: server RSS per connection, {held} with pings (KiB)"),
            Better::Lower,
            col,
            rss_per,
        );
        table.set(
            "scale: kernel slab per connection, both ends (KiB)",
            Better::Lower,
            col,
            slab_per,
        );
        table.set(
            "scale: kernel TCP buffer memory per connection (KiB)",
            Better::Lower,
            col,
            tcp_per,
        );
        table.set(
            "scale: server CPU per connection per second, 1 ping/s (us)",
            Better::Lower,
            col,
            cpu_per_conn_us,
        );
        // 1,000,000 connections: the process grows by what each cost here; the kernel's half
        // of the slab is the server's end (the clients would be elsewhere).
        let million = 1_000_000.0;
        let process_gib = (rss0 as f64 + rss_per * million) / (1024.0 * 1024.0);
        let kernel_gib = (slab_per / 2.0 + tcp_per / 2.0) * million / (1024.0 * 1024.0);
        let cores_30s = cpu_per_conn_us * million / 30.0 / 1e6;
        table.set(
            "scale: 1,000,000 connections projected: server process (GiB)",
            Better::Lower,
            col,
            process_gib,
        );
        table.set(
            "scale: 1,000,000 projected: kernel, server's end (GiB)",
            Better::Lower,
            col,
            kernel_gib,
        );
        table.set(
            "scale: 1,000,000 projected: cores for pings every 30 s",
            Better::Lower,
            col,
            cores_30s,
        );
        projections.push((col, process_gib, kernel_gib, cores_30s));
    }
    for (col, process_gib, kernel_gib, cores) in projections {
        // What runs out first, as a fraction of what there is.
        let mut bounds = [
            ("descriptors (20,000 a process here: 50x short)", 50.0),
            ("memory (24 GiB machine)", (process_gib + kernel_gib) / 24.0),
            ("process memory (2 GiB target)", process_gib / 2.0),
            ("CPU (2 cores)", cores / 2.0),
            (
                "ports (needs 36+ client addresses: not a bound over 127.0.0.0/8)",
                0.0,
            ),
        ];
        bounds.sort_by(|a, b| b.1.total_cmp(&a.1));
        let after: Vec<String> = bounds[1..]
            .iter()
            .filter(|b| b.1 > 0.0)
            .map(|b| format!("{} at {:.0}%", b.0, b.1 * 100.0))
            .collect();
        table.notes.push(format!(
            "- scale, {}: 1,000,000 connections would be bounded first by {}; then {}.",
            col_name(col),
            bounds[0].0,
            after.join(", ")
        ));
    }
    Ok(())
}

fn codec(env: &Env, root: &Path, table: &mut Table) -> Result<(), String> {
    let sizes = [
        (16usize, "16B", "16 B"),
        (1024, "1KiB", "1 KiB"),
        (65536, "64KiB", "64 KiB"),
    ];
    let codecs = [
        (Col::Smol, "spool"),
        (Col::Tung, "tungstenite"),
        (Col::TokioWs, "tokio-websockets"),
    ];
    // criterion: messages per second.
    let (warm, measure) = if env.quick { ("0.5", "1") } else { ("1", "3") };
    let status = Command::new("cargo")
        .current_dir(root)
        .args(["bench", "-q", "-p", "spool-tests", "--bench", "codec", "--"])
        .args([
            "--warm-up-time",
            warm,
            "--measurement-time",
            measure,
            "codec-",
        ])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cargo bench: {e}"))?;
    if !status.success() {
        return Err(format!("cargo bench failed: {status}"));
    }
    let criterion = root.join("target/criterion");
    for (op, what) in [("decode", "decode+unmask"), ("encode", "encode")] {
        for (len, tag, size) in sizes {
            let per_iter = (65536 / len).max(1) as f64;
            let label = format!("codec: {what} {size}, messages/s (criterion)");
            for (col, name) in codecs {
                let path = criterion
                    .join(format!("codec-{op}-{tag}"))
                    .join(name)
                    .join("new/estimates.json");
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| e.to_string())?;
                if let Some(ns) = v["mean"]["point_estimate"].as_f64() {
                    table.set(&label, Better::Higher, col, per_iter * 1e9 / ns);
                    if col == Col::Smol {
                        table.set(&label, Better::Higher, Col::Std, per_iter * 1e9 / ns);
                    }
                }
            }
        }
    }
    // callgrind: instructions per message, the difference of two runs of N and 2N.
    if Command::new("valgrind").arg("--version").output().is_err() {
        table
            .notes
            .push("- codec: valgrind is not installed: no instruction counts".into());
        return Ok(());
    }
    for (op, what) in [("decode", "decode+unmask"), ("encode", "encode")] {
        for (len, _, size) in sizes {
            let n = match len {
                16 => 20_000,
                1024 => 2_000,
                _ => 100,
            };
            let label = format!("codec: {what} {size}, instructions per message (callgrind)");
            for (col, name) in codecs {
                let count = |m: usize| -> Option<u64> {
                    let out = Command::new("valgrind")
                        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
                        .arg(env.bin.join("bench_codec"))
                        .args([op, name, &len.to_string(), &m.to_string()])
                        .output()
                        .ok()?;
                    let err = String::from_utf8_lossy(&out.stderr);
                    err.lines()
                        .find_map(|l| {
                            l.split_once("Collected :")
                                .map(|(_, v)| v.trim().to_string())
                        })
                        .and_then(|v| v.parse().ok())
                };
                if let (Some(a), Some(b)) = (count(n), count(2 * n)) {
                    let per = b.saturating_sub(a) as f64 / n as f64;
                    table.set(&label, Better::Lower, col, per);
                    if col == Col::Smol {
                        table.set(&label, Better::Lower, Col::Std, per);
                    }
                }
            }
        }
    }
    table.notes.push(
        "- codec rows: spool-core's codec, the same figure under both shells; tungstenite 0.30 \
         and tokio-websockets 0.12 on the same masked bytes (64 KiB of frames a read)."
            .into(),
    );
    Ok(())
}

/// The fan-out targets, judged on each shell: a row is met when one shell meets it (a lost
/// delivery on either shell is a miss), and a note says whether one shell met all of them (the
/// issue asks for both figures on one core, and the two shells do not always miss the same).
fn fanout_targets(t: &mut Table, shells: &[Col]) {
    let dps = "fan-out, as fast as offered: deliveries/s";
    let missing = "fan-out, as fast as offered: missing deliveries";
    let p99 = "fan-out, 1 broadcast/s: p99 latency (ms)";
    let cpu = "fan-out, 1 broadcast/s: server CPU per delivery (us)";
    type Check = fn(f64) -> bool;
    // (row, target, check, whether every shell must meet it)
    let checks: [(&str, &str, Check, bool); 4] = [
        (
            dps,
            ">= 1,000,000/s on one core (one shell)",
            |v| v >= 1e6,
            false,
        ),
        (missing, "0 (both shells)", |v| v == 0.0, true),
        (p99, "< 80 ms (one shell)", |v| v < 80.0, false),
        (cpu, "< 8 us (one shell)", |v| v < 8.0, false),
    ];
    if !checks
        .iter()
        .any(|(label, ..)| shells.iter().any(|c| t.get(label, *c).is_some()))
    {
        return; // the fan-out section did not run
    }
    let mut whole = Vec::new();
    for &col in shells {
        let mut misses = Vec::new();
        let mut measured = true;
        for (label, _, ok, _) in &checks {
            match t.get(label, col) {
                Some(v) if !v.is_nan() => {
                    if !ok(v) {
                        misses.push(format!("{} {}", short(label), fmt(v)));
                    }
                }
                _ => measured = false,
            }
        }
        whole.push(match (measured, misses.is_empty()) {
            (false, _) => format!("{} not measured in full", col_name(col)),
            (true, true) => format!("{} yes", col_name(col)),
            (true, false) => format!("{} no ({})", col_name(col), misses.join(", ")),
        });
    }
    for (label, target, ok, all) in checks {
        let values: Vec<f64> = shells.iter().filter_map(|c| t.get(label, *c)).collect();
        if values.is_empty() {
            continue;
        }
        // A run that failed (NaN) meets nothing.
        let met = if all {
            values.len() == shells.len() && values.iter().all(|v| ok(*v))
        } else {
            values.iter().any(|v| ok(*v))
        };
        t.target(label, target, Some(met));
    }
    t.notes.push(format!(
        "- fan-out, every target on one shell: {}",
        whole.join("; ")
    ));
}

/// A fan-out row's label without its section, for a note.
fn short(label: &str) -> &str {
    label.split_once(": ").map_or(label, |(_, rest)| rest)
}

/// The targets of issue 12, from figures of this run.
fn targets(t: &mut Table) {
    let spool = [Col::Smol, Col::Std];
    for size in ["1 KiB", "16 B"] {
        let cpu = format!("echo {size}: server CPU per round trip (us)");
        let mio = t.get(&cpu, Col::Mio);
        let fast = t.get(&cpu, Col::Fast);
        let shells: Vec<f64> = spool.iter().filter_map(|c| t.get(&cpu, *c)).collect();
        let met = match (mio, fast, shells.len()) {
            (Some(m), Some(f), 2) => {
                Some(shells.iter().any(|s| *s <= 1.10 * m) && shells.iter().all(|s| *s <= f))
            }
            _ => None,
        };
        t.target(
            &cpu,
            "<= 1.10x mio on one shell, <= fastwebsockets on both",
            met,
        );
        let p99 = format!("echo {size}: p99 latency (us)");
        let fast = t.get(&p99, Col::Fast);
        let shells: Vec<f64> = spool.iter().filter_map(|c| t.get(&p99, *c)).collect();
        let met = fast
            .filter(|_| shells.len() == 2)
            .map(|f| shells.iter().all(|s| *s <= f));
        t.target(&p99, "<= fastwebsockets (both shells)", met);
    }
    let label = t
        .rows
        .iter()
        .find(|r| r.label.starts_with("memory: "))
        .map(|r| r.label.clone());
    if let Some(label) = label {
        let shells: Vec<f64> = spool.iter().filter_map(|c| t.get(&label, *c)).collect();
        let met =
            (!shells.is_empty()).then(|| shells.len() == 2 && shells.iter().all(|s| *s < 2.0));
        t.target(&label, "< 2 KiB (both shells)", met);
    }
    fanout_targets(t, &spool);
    let process = "scale: 1,000,000 connections projected: server process (GiB)";
    let shells: Vec<f64> = spool.iter().filter_map(|c| t.get(process, *c)).collect();
    if !shells.is_empty() {
        t.target(
            process,
            "< 2 GiB (one shell)",
            Some(shells.iter().any(|s| *s < 2.0)),
        );
    }
    for size in ["16 B", "1 KiB"] {
        let label = format!("codec: decode+unmask {size}, messages/s (criterion)");
        if let (Some(s), Some(tu), Some(tw)) = (
            t.get(&label, Col::Smol),
            t.get(&label, Col::Tung),
            t.get(&label, Col::TokioWs),
        ) {
            t.target(
                &label,
                ">= 2x tungstenite, >= tokio-websockets",
                Some(s >= 2.0 * tu && s >= tw),
            );
        }
    }
    let label = "codec: decode+unmask 64 KiB, messages/s (criterion)";
    if let (Some(s), Some(tw)) = (t.get(label, Col::Smol), t.get(label, Col::TokioWs)) {
        t.target(label, ">= tokio-websockets", Some(s >= tw));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every server once a run, each run starting elsewhere; one run keeps the given order.
    #[test]
    fn each_run_visits_every_server_once_from_a_different_start() {
        let order = |n, run, runs| rotated(n, run, runs).collect::<Vec<_>>();
        assert_eq!(order(7, 0, 3), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(order(7, 1, 3), [2, 3, 4, 5, 6, 0, 1]);
        assert_eq!(order(7, 2, 3), [4, 5, 6, 0, 1, 2, 3]);
        assert_eq!(order(4, 1, 3), [1, 2, 3, 0]);
        assert_eq!(order(4, 0, 1), [0, 1, 2, 3]);
        assert_eq!(order(0, 2, 3), Vec::<usize>::new());
        assert_eq!(order(2, 5, 0), [0, 1]);
    }

    const DPS: &str = "fan-out, as fast as offered: deliveries/s";
    const MISSING: &str = "fan-out, as fast as offered: missing deliveries";
    const P99: &str = "fan-out, 1 broadcast/s: p99 latency (ms)";
    const CPU: &str = "fan-out, 1 broadcast/s: server CPU per delivery (us)";

    /// A table with fan-out figures per shell: (deliveries/s, missing, p99 ms, CPU us).
    fn fanout_table(smol: [f64; 4], std: [f64; 4]) -> Table {
        let mut t = Table::default();
        for (col, v) in [(Col::Smol, smol), (Col::Std, std)] {
            t.set(DPS, Better::Higher, col, v[0]);
            t.set(MISSING, Better::Lower, col, v[1]);
            t.set(P99, Better::Lower, col, v[2]);
            t.set(CPU, Better::Lower, col, v[3]);
        }
        fanout_targets(&mut t, &[Col::Smol, Col::Std]);
        t
    }

    fn met(t: &Table, label: &str) -> Option<bool> {
        t.rows.iter().find(|r| r.label == label).and_then(|r| r.met)
    }

    #[test]
    fn a_fanout_row_is_met_by_one_shell_and_the_note_says_if_one_met_all() {
        let t = fanout_table([1.2e6, 0.0, 87.1, 8.9], [9.5e5, 0.0, 74.5, 6.5]);
        assert_eq!(met(&t, DPS), Some(true));
        assert_eq!(met(&t, MISSING), Some(true));
        assert_eq!(met(&t, P99), Some(true));
        assert_eq!(met(&t, CPU), Some(true));
        let note = t.notes.last().expect("a note");
        assert!(
            note.contains(
                "spool-smol no (p99 latency (ms) 87.1, server CPU per delivery (us) 8.90)"
            ) && note.contains("spool-std no (deliveries/s 950,000)"),
            "{note}"
        );
        let t = fanout_table([1.2e6, 0.0, 79.0, 7.9], [9.5e5, 0.0, 74.5, 6.5]);
        assert!(t.notes.last().expect("a note").contains("spool-smol yes"));
    }

    #[test]
    fn a_lost_delivery_on_either_shell_or_a_failed_run_misses() {
        let t = fanout_table([1.2e6, 0.0, 70.0, 6.0], [1.1e6, 3.0, 70.0, 6.0]);
        assert_eq!(met(&t, MISSING), Some(false));
        assert_eq!(met(&t, DPS), Some(true));
        let t = fanout_table([f64::NAN, f64::NAN, 70.0, 6.0], [9e5, 0.0, 90.0, 9.0]);
        assert_eq!(met(&t, MISSING), Some(false));
        assert_eq!(met(&t, DPS), Some(false));
        assert_eq!(met(&t, P99), Some(true));
        let note = t.notes.last().expect("a note");
        assert!(note.contains("spool-smol not measured in full"), "{note}");
    }

    #[test]
    fn no_fanout_figures_no_verdict_and_no_note() {
        let mut t = Table::default();
        fanout_targets(&mut t, &[Col::Smol, Col::Std]);
        assert!(t.notes.is_empty() && t.rows.is_empty());
    }
}
