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
[--scale-conns N] [--memory-conns N] [--runs N] [--node-dir D]
       bench echo --addr A [--conns N] [--len B] [--secs S] [--warmup S] [--pid PID] [--process P]
       bench fanout --addr A [--path P] [--subs N] [--broadcasts N] [--rate R] [--in-flight N] \
[--pid PID] [--process P]
       bench hold --addr A --count N [--process P]";

/// The flags each command reads. Anything else is refused: a misspelt `--scale-conns` or a
/// `--help` must not start a ten-minute run on the defaults.
fn known_flags(command: &str) -> Option<&'static [&'static str]> {
    Some(match command {
        "run" => &[
            "quick",
            "only",
            "scale-conns",
            "memory-conns",
            "runs",
            "node-dir",
        ],
        "echo" => &["addr", "conns", "len", "secs", "warmup", "pid", "process"],
        "fanout" => &[
            "addr",
            "path",
            "subs",
            "broadcasts",
            "rate",
            "in-flight",
            "pid",
            "process",
        ],
        "hold" => &["addr", "count", "process"],
        _ => return None,
    })
}

fn asks_for_help(args: &[String]) -> bool {
    args.iter()
        .any(|a| a == "--help" || a == "-h" || a == "help")
}

/// The command and its flags, or what to print instead (usage, or why the line is wrong).
fn parse(args: &[String]) -> Result<(&str, Flags), String> {
    if asks_for_help(args) {
        return Err(USAGE.to_string());
    }
    let command = args.first().map_or("", String::as_str);
    let known = known_flags(command).ok_or_else(|| USAGE.to_string())?;
    let f = flags(&args[1..])?;
    if let Some((name, _)) = f.iter().find(|(n, _)| !known.contains(&n.as_str())) {
        return Err(format!("{command}: unknown flag --{name}\n{USAGE}"));
    }
    Ok((command, f))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match parse(&args) {
        Err(e) if asks_for_help(&args) => {
            println!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => Err(e),
        Ok(("run", f)) => run::run(&f),
        Ok(("echo", f)) => load::echo(&f),
        Ok(("fanout", f)) => load::fanout(&f),
        Ok((_, f)) => load::hold(&f),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn help_and_unknown_flags_do_not_start_a_run() {
        assert_eq!(parse(&args("run --help")).unwrap_err(), USAGE);
        assert_eq!(parse(&args("-h")).unwrap_err(), USAGE);
        let e = parse(&args("run --scale-con 100")).unwrap_err();
        assert!(e.starts_with("run: unknown flag --scale-con\n"), "{e}");
        assert!(parse(&args("echo --subs 3")).is_err());
        assert_eq!(parse(&args("serve")).unwrap_err(), USAGE);
        assert_eq!(parse(&args("")).unwrap_err(), USAGE);
    }

    #[test]
    fn known_flags_pass_with_their_values() {
        let line = args("run --quick --only echo,codec --runs 2");
        let (command, f) = parse(&line).unwrap();
        assert_eq!(command, "run");
        assert_eq!(flag(&f, "only", String::new()).unwrap(), "echo,codec");
        assert_eq!(flag(&f, "runs", 3).unwrap(), 2);
        assert!(flag(&f, "quick", false).unwrap());
        let line = args("hold --addr 127.0.0.1:1 --count 5");
        let (command, _) = parse(&line).unwrap();
        assert_eq!(command, "hold");
    }
}
