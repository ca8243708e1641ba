//! Event logs of a [`Channels`] machine: its configuration, then every event it was given,
//! one JSON object a line; [`replay`] runs one again to the same outbounds.

use serde::{Deserialize, Serialize};

use super::channels::{Channels, Config, Event, Outbound};

/// One line of a log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// The first line: the machine's configuration.
    Setup(Config),
    /// An event given to the machine.
    Event(Event),
}

/// Runs a log again: each event with the outbounds it gives now.
///
/// # Errors
/// A message naming the line that is not JSON for a [`Line`], or a log that does not start
/// with its setup.
pub fn replay(log: &str) -> Result<Vec<(Event, Vec<Outbound>)>, String> {
    let mut lines = log
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let parse = |(n, line): (usize, &str)| {
        serde_json::from_str::<Line>(line).map_err(|e| format!("line {}: {e}", n + 1))
    };
    let mut channels = match lines.next().map(parse).transpose()? {
        Some(Line::Setup(config)) => Channels::new(config),
        _ => return Err("line 1: not a setup line".into()),
    };
    let mut out = Vec::new();
    for line in lines {
        match parse(line)? {
            Line::Event(event) => {
                let outbounds = channels.handle(event.clone());
                out.push((event, outbounds));
            }
            Line::Setup(_) => return Err(format!("line {}: a second setup", line.0 + 1)),
        }
    }
    Ok(out)
}
