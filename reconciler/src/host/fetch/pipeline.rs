//! The worker half of a download: decompress, extract a tar member, hash and write the result,
//! on a blocking thread fed through a bounded channel so network and CPU work overlap.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::manifest::Decompress;

pub struct Job {
    pub tmp_dir: PathBuf,
    pub decompress: Decompress,
    pub member: Option<String>,
    pub executable: bool,
}

pub struct Output {
    pub file: tempfile::NamedTempFile,
    pub content_sha256: String,
    pub size: u64,
}

#[derive(Debug)]
pub enum WorkerError {
    Decode(io::Error),
    NoMember { member: String, found: String },
    Io(io::Error),
}

/// Chunks in flight between the network and the worker: enough to ride out short stalls,
/// small enough to bound memory (at most DEPTH × 256 KiB).
const DEPTH: usize = 16;

pub fn spawn(
    job: Job,
) -> (
    mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<Result<Output, WorkerError>>,
) {
    let (tx, rx) = mpsc::channel(DEPTH);
    let handle = tokio::task::spawn_blocking(move || run(job, rx));
    (tx, handle)
}

/// The channel as a `Read`.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Hashes what passes through to the file.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn run(job: Job, rx: mpsc::Receiver<Bytes>) -> Result<Output, WorkerError> {
    let mut raw = ChannelReader {
        rx,
        current: Bytes::new(),
    };
    let file = tempfile::NamedTempFile::new_in(&job.tmp_dir).map_err(WorkerError::Io)?;
    let handle = file.as_file().try_clone().map_err(WorkerError::Io)?;
    let mut out = HashingWriter {
        inner: io::BufWriter::with_capacity(1 << 20, handle),
        hasher: Sha256::new(),
        size: 0,
    };
    {
        let decoded: Box<dyn Read + '_> = match job.decompress {
            Decompress::None => Box::new(&mut raw),
            Decompress::Xz => Box::new(xz2::read::XzDecoder::new(&mut raw)),
            Decompress::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut raw)),
        };
        match &job.member {
            None => {
                let mut decoded = decoded;
                copy(&mut decoded, &mut out)?;
            }
            Some(member) => extract(decoded, member, &mut out)?,
        }
    }
    // Whatever follows (the rest of an archive) still has to be fetched and hashed.
    io::copy(&mut raw, &mut io::sink()).map_err(WorkerError::Io)?;
    out.flush().map_err(WorkerError::Io)?;
    let HashingWriter {
        inner,
        hasher,
        size,
    } = out;
    drop(inner);
    let mode = if job.executable { 0o755 } else { 0o644 };
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(WorkerError::Io)?;
    file.as_file().sync_all().map_err(WorkerError::Io)?;
    Ok(Output {
        file,
        content_sha256: hex::encode(hasher.finalize()),
        size,
    })
}

/// Copy, telling decode errors (bad input) from write errors (our disk).
fn copy<R: Read + ?Sized, W: Write>(r: &mut R, w: &mut W) -> Result<u64, WorkerError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(WorkerError::Decode(e)),
        };
        w.write_all(&buf[..n]).map_err(WorkerError::Io)?;
        total += n as u64;
    }
}

fn extract<R: Read, W: Write>(decoded: R, member: &str, out: &mut W) -> Result<(), WorkerError> {
    let want = member.trim_start_matches("./");
    let mut archive = tar::Archive::new(decoded);
    let mut seen = Vec::new();
    let entries = archive.entries().map_err(WorkerError::Decode)?;
    for entry in entries {
        let mut entry = entry.map_err(WorkerError::Decode)?;
        let path = entry.path().map_err(WorkerError::Decode)?.into_owned();
        let name = path.to_string_lossy();
        let name = name.trim_start_matches("./");
        if name == want && entry.header().entry_type().is_file() {
            copy(&mut entry, out)?;
            // The caller drains the rest of the raw stream, so it is still fetched and hashed.
            return Ok(());
        }
        if seen.len() < 10 {
            seen.push(name.to_string());
        }
    }
    Err(WorkerError::NoMember {
        member: member.to_string(),
        found: if seen.is_empty() {
            "no files".to_string()
        } else {
            seen.join(", ")
        },
    })
}
