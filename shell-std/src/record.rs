//! Event logs (`spool_core::replay`): the setup line, then every event given to the core, one
//! JSON object a line, so that a connection seen in the field replays to the same outbounds.
//! Shared by both shells: `spool-smol`'s client records through it too.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use spool_core::replay::{Line, Setup};
use spool_core::ws::Event;

/// One connection's event log, written through a buffer as events happen.
pub struct Recorder {
    out: BufWriter<File>,
    /// Set after the first write error: a log with a hole in it would replay to something else,
    /// so the rest is dropped rather than the connection failed for its log's sake.
    broken: bool,
}

impl Recorder {
    /// Creates `path` and writes the setup line.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn create(path: &Path, setup: Setup) -> io::Result<Recorder> {
        let mut recorder = Recorder {
            out: BufWriter::new(File::create(path)?),
            broken: false,
        };
        recorder.line(&Line::Setup(setup));
        Ok(recorder)
    }

    /// Records one event, before it is handed to the core.
    pub fn event(&mut self, event: &Event) {
        // Line owns its event; the clone is a reference count for bytes and a copy for text,
        // paid only while recording.
        self.line(&Line::Event(event.clone()));
    }

    /// Writes out what is buffered, so the log is whole up to here.
    pub fn flush(&mut self) {
        if !self.broken && self.out.flush().is_err() {
            self.broken = true;
        }
    }

    fn line(&mut self, line: &Line) {
        if self.broken {
            return;
        }
        let written = serde_json::to_writer(&mut self.out, line)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        self.broken = written.is_err();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}
