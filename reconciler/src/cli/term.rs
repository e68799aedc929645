//! Terminal concerns: is this a TTY, colours, the confirmation prompt, progress lines.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use crate::apply::{Outcome, Progress};
use crate::plan::render::Style;
use crate::plan::{Change, Op};

pub fn stdout_style() -> Style {
    Style {
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// Ask on the terminal; only `yes` proceeds.
pub fn confirm(question: &str) -> std::io::Result<bool> {
    let mut out = std::io::stdout();
    write!(
        out,
        "{question}\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: "
    )?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}

pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// Progress lines as actions start and end (stdout in text mode, stderr with --json).
pub struct Lines {
    pub style: Style,
    pub to_stderr: bool,
}

impl Lines {
    fn say(&self, s: String) {
        if self.to_stderr {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
}

fn verb(op: Op) -> (&'static str, &'static str) {
    match op {
        Op::Create => ("creating", "created"),
        Op::Update => ("updating", "updated"),
        Op::Restart => ("restarting", "restarted"),
        Op::Replace => ("replacing", "replaced"),
        Op::Destroy => ("destroying", "destroyed"),
    }
}

impl Progress for Lines {
    fn started(&self, change: &Change) {
        self.say(format!("{}: {}…", change.address, verb(change.op).0));
    }

    fn retrying(&self, change: &Change, attempt: u32, error: &str, delay: Duration) {
        self.say(format!(
            "{}: attempt {attempt} failed ({error}); retrying in {}",
            change.address,
            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
        ));
    }

    fn finished(&self, change: &Change, outcome: &Outcome) {
        let s = &self.style;
        let line = match outcome {
            Outcome::Done { seconds, .. } => s.green(&format!(
                "{}: {} in {seconds:.1}s",
                change.address,
                verb(change.op).1
            )),
            Outcome::Failed { error, .. } => s.red(&format!(
                "{}: {} failed: {error}",
                change.address,
                verb(change.op).0
            )),
            Outcome::Skipped { because } => s.yellow(&format!(
                "{}: skipped, because {because} did not succeed",
                change.address
            )),
            Outcome::NotStarted => {
                s.yellow(&format!("{}: not started (interrupted)", change.address))
            }
        };
        self.say(line);
    }

    fn leftover(&self, orphan: &crate::orphans::Orphan, error: Option<&str>) {
        let s = &self.style;
        self.say(match error {
            None => s.green(&format!(
                "leftover {}: {}",
                orphan.describe(),
                orphan.action()
            )),
            Some(e) => s.red(&format!(
                "leftover {}: not {}: {e}",
                orphan.describe(),
                orphan.action()
            )),
        });
    }
}
