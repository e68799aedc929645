//! The local terminal of `fort shell` and `fort exec -it`: raw mode, restored on every way
//! out (the guard's drop on return, error and unwind; a panic hook for a panic that does not
//! unwind through the guard; the callers restore it before exiting on SIGTERM/SIGHUP), and
//! the window size.

use std::sync::{Mutex, Once, PoisonError};

use fort_agent_protocol::process::PtySize;
use rustix::termios::{self, OptionalActions, Termios};

#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("cannot read the terminal's mode")]
    Get(#[source] std::io::Error),
    #[error("cannot put the terminal in raw mode")]
    Set(#[source] std::io::Error),
}

/// The mode stdin's terminal had before raw mode, while raw mode is on. Global so that the
/// panic hook can restore it too.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Raw mode on stdin's terminal until dropped: every byte typed (Ctrl-C, Ctrl-D, …) reaches
/// the program in the guest, whose own terminal does the line editing and signals.
#[derive(Debug)]
pub struct RawMode(());

impl RawMode {
    pub fn enter() -> Result<RawMode, TerminalError> {
        static HOOK: Once = Once::new();
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).map_err(|e| TerminalError::Get(e.into()))?;
        let mut raw = saved.clone();
        raw.make_raw();
        *SAVED.lock().unwrap_or_else(PoisonError::into_inner) = Some(saved);
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                // Before the message, so it is printed on a sane terminal.
                restore();
                previous(info);
            }));
        });
        let guard = RawMode(());
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)
            .map_err(|e| TerminalError::Set(e.into()))?;
        Ok(guard)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Put the saved mode back (once; later calls do nothing).
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(t) = saved {
        // `Now`, not `Drain`: waiting for output to drain could hang on a stopped terminal,
        // and the terminal must be given back whatever happened.
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &t);
    }
}

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    termios::isatty(std::io::stdin())
}

/// The window size of stdin's terminal, else stdout's; `None` when neither is a terminal (or
/// one reports 0×0, as a serial line without a size does).
pub fn window_size() -> Option<PtySize> {
    let ws = termios::tcgetwinsize(std::io::stdin())
        .or_else(|_| termios::tcgetwinsize(std::io::stdout()))
        .ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some(PtySize {
        rows: u32::from(ws.ws_row),
        cols: u32::from(ws.ws_col),
    })
}
