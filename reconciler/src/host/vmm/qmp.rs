//! A small blocking QMP client (QEMU's JSON monitor on `run/NAME/qmp.sock`): commands,
//! their answers (events skipped), and descriptors passed with `getfd` (SCM_RIGHTS), which is
//! how a confined QEMU — no `-sandbox spawn`, no access to fort's files — writes and reads a
//! snapshot stream.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot reach QEMU's monitor {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU's monitor connection failed during {command}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU refused {command}: {desc}")]
    Refused { command: String, desc: String },
    #[error("QEMU's monitor sent something that is not QMP during {command}: {line}")]
    Garbled { command: String, line: String },
}

pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connect and leave capabilities negotiation mode. Retries for `wait` while the socket
    /// is not there yet (a QEMU that was just started).
    pub fn connect(path: &Path, wait: Duration) -> Result<Qmp, QmpError> {
        let end = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < end => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        };
        let conn = |source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(conn)?;
        let reader = BufReader::new(stream.try_clone().map_err(conn)?);
        let mut q = Qmp {
            writer: stream,
            reader,
        };
        q.line("greeting")?;
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn line(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                command: command.to_string(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Io {
                command: command.to_string(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Garbled {
            command: command.to_string(),
            line: line.trim().to_string(),
        })
    }

    /// The process id of the QEMU on the other end (the socket's peer credentials): the
    /// QEMU this monitor belongs to, whoever started it.
    pub fn peer_pid(&self) -> Result<u32, QmpError> {
        rustix::net::sockopt::get_socket_peercred(&self.writer)
            .map(|c| c.pid.as_raw_nonzero().get() as u32)
            .map_err(|e| QmpError::Io {
                command: "SO_PEERCRED".into(),
                source: e.into(),
            })
    }

    /// Run a command; its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.send(command, arguments, None)
    }

    /// Run a command with a descriptor attached (`getfd`).
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        self.send(command, arguments, Some(fd))
    }

    fn send(
        &mut self,
        command: &str,
        arguments: Value,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command, "arguments": arguments }).to_string();
        msg.push('\n');
        let io = |source| QmpError::Io {
            command: command.to_string(),
            source,
        };
        match fd {
            None => self.writer.write_all(msg.as_bytes()).map_err(io)?,
            Some(fd) => {
                use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
                let fds = [fd];
                let mut space = [0u8; rustix::cmsg_space!(ScmRights(1))];
                let mut anc = SendAncillaryBuffer::new(&mut space);
                anc.push(SendAncillaryMessage::ScmRights(&fds));
                let n = rustix::net::sendmsg(
                    self.writer.as_fd(),
                    &[std::io::IoSlice::new(msg.as_bytes())],
                    &mut anc,
                    SendFlags::empty(),
                )
                .map_err(|e| io(e.into()))?;
                // The descriptor went with the first byte; the rest is an ordinary write.
                self.writer.write_all(&msg.as_bytes()[n..]).map_err(io)?;
            }
        }
        loop {
            let v = self.line(command)?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Refused {
                    command: command.to_string(),
                    desc: e
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .to_string(),
                });
            }
            return Err(QmpError::Garbled {
                command: command.to_string(),
                line: v.to_string(),
            });
        }
    }

    /// `query-status`'s `status`: "running", "paused", "inmigrate", "postmigrate", …
    pub fn status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status", json!({}))?;
        Ok(r.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }

    /// Is a device with this id plugged in (`/machine/peripheral/ID`)?
    pub fn has_device(&mut self, id: &str) -> Result<bool, QmpError> {
        let r = self.execute("qom-list", json!({ "path": "/machine/peripheral" }))?;
        Ok(r.as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p.get("name").and_then(Value::as_str) == Some(id))
        }))
    }
}

/// Ask the state of a running QEMU (`query-status`) without waiting for a QEMU that is not
/// there: `None` when its monitor does not answer.
pub fn status(run_dir: &Path) -> Option<String> {
    let mut q = Qmp::connect(&super::RunDir(run_dir).qmp(), Duration::ZERO).ok()?;
    q.status().ok()
}
