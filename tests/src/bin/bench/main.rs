//! spool's benchmark suite: the driver, its load generators and the table.
//!
//! ```text
//! bash tests/scripts/bench.sh [--quick] [--only echo,fanout,memory,scale,codec]
//! ```
//! builds everything and runs `bench run`, which starts each server (spool's two shells and
//! the peers of `src/bin/peer_*.rs` and `tests/node/bench_*.js`) pinned to core 0, runs the
//! load generator of this same program (`bench echo|fanout|hold`, on spool-core) pinned to
//! core 1, reads the server's CPU time and memory from /proc, and prints one table: each
//! figure for spool beside the same figure for every peer from the same run, the ratios, the
//! targets of issue 12 and whether they are met. Loopback only; every step is bounded in time
//! and every process started is killed on the way out.

mod client;
mod load;
mod procfs;
mod run;

use std::process::ExitCode;

/// `--name value` pairs.
pub type Flags = Vec<(String, String)>;

pub fn flags(args: &[String]) -> Result<Flags, String> {
    let mut out = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(name) = it.next() {
        let Some(name) = name.strip_prefix("--") else {
            return Err(format!("unexpected argument {name:?}"));
        };
        // A flag followed by another flag (or nothing) is a switch.
        let value = match it.peek() {
            Some(v) if !v.starts_with("--") => it.next().cloned().unwrap_or_default(),
            _ => "true".to_string(),
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

pub fn flag<T: std::str::FromStr>(flags: &Flags, name: &str, default: T) -> Result<T, String> {
    match flags.iter().rev().find(|(n, _)| n == name) {
        Some((_, v)) => v.parse().map_err(|_| format!("--{name}: bad value {v:?}")),
        None => Ok(default),
    }
}

const USAGE: &str = "usage: bench run [--quick] [--only echo,fanout,memory,scale,codec] \
[--scale-conns N] [--memory-conns N] [--runs N]
       bench echo --addr A [--conns N] [--len B] [--secs S] [--warmup S] [--pid PID]
       bench fanout --addr A [--subs N] [--broadcasts N] [--rate R] [--pid PID]
       bench hold --addr A --count N [--process P]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match (
        args.first().map(String::as_str),
        flags(args.get(1..).unwrap_or(&[])),
    ) {
        (_, Err(e)) => Err(e),
        (Some("run"), Ok(f)) => run::run(&f),
        (Some("echo"), Ok(f)) => load::echo(&f),
        (Some("fanout"), Ok(f)) => load::fanout(&f),
        (Some("hold"), Ok(f)) => load::hold(&f),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
