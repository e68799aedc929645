//! File tools: `file_read`, `file_write`, `file_delete`, `list_dir`, `stat`.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use fort_agent_protocol::tools::{Encoding, FileDelete, FileRead, FileWrite, PathArgs};
use serde_json::{json, Value};

use super::{Output, ToolError};

/// The most `file_read` returns in one call (more: read again with `offset`).
pub const READ_CAP: u64 = 4 << 20;
const LIST_CAP: usize = 10_000;

fn abs(p: &str) -> PathBuf {
    Path::new("/").join(p)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ToolError {
    let why = match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    ToolError::Failed(format!("{what} {}: {why}", path.display()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ToolError> + Send + 'static,
) -> Result<T, ToolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ToolError::Failed(format!("internal error: {e}")))?
}

pub async fn read(a: FileRead) -> Result<Output, ToolError> {
    let path = abs(&a.path);
    blocking(move || {
        let meta = fs::metadata(&path).map_err(|e| io_err("cannot read", &path, e))?;
        if meta.is_dir() {
            return Err(ToolError::Failed(format!(
                "cannot read {}: it is a directory (use list_dir)",
                path.display()
            )));
        }
        let mut f = fs::File::open(&path).map_err(|e| io_err("cannot read", &path, e))?;
        let offset = a.offset.unwrap_or(0);
        let want = a.length.unwrap_or(READ_CAP).min(READ_CAP);
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err("cannot read", &path, e))?;
        let mut buf = Vec::new();
        f.take(want)
            .read_to_end(&mut buf)
            .map_err(|e| io_err("cannot read", &path, e))?;
        let size = meta.len();
        let eof = offset + buf.len() as u64 >= size;
        let content = match a.encoding {
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(&buf),
            Encoding::Utf8 => match String::from_utf8(buf.clone()) {
                Ok(s) => s,
                Err(e) => {
                    return Err(ToolError::Failed(format!(
                        "{} is not valid UTF-8 (at byte {}): read it with encoding = \"base64\"",
                        path.display(),
                        offset + e.utf8_error().valid_up_to() as u64
                    )))
                }
            },
        };
        let structured = json!({
            "path": path,
            "content": content,
            "encoding": if a.encoding == Encoding::Base64 { "base64" } else { "utf-8" },
            "offset": offset,
            "length": buf.len(),
            "size": size,
            "eof": eof,
        });
        let text = if a.encoding == Encoding::Utf8 {
            content
        } else {
            format!(
                "{} bytes of {} (base64 in structuredContent)",
                buf.len(),
                path.display()
            )
        };
        Ok(Output { text, structured })
    })
    .await
}

/// A `file_write` with its content decoded and its mode parsed.
pub struct WriteFile {
    path: PathBuf,
    data: Vec<u8>,
    mode: Option<u32>,
    create_parents: bool,
    append: bool,
    atomic: Option<bool>,
}

pub fn prepare_write(a: FileWrite) -> Result<WriteFile, ToolError> {
    let path = abs(&a.path);
    let data = match a.encoding {
        Encoding::Utf8 => a.content.into_bytes(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(a.content.as_bytes())
            .map_err(|e| ToolError::Params(format!("`content` is not valid base64: {e}")))?,
    };
    let mode = match &a.mode {
        Some(m) => Some(
            u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    ToolError::Params(format!("`mode` must be octal like \"0644\", got \"{m}\""))
                })?,
        ),
        None => None,
    };
    Ok(WriteFile {
        path,
        data,
        mode,
        create_parents: a.create_parents,
        append: a.append,
        atomic: a.atomic,
    })
}

pub async fn write(a: WriteFile) -> Result<Output, ToolError> {
    let WriteFile {
        path,
        data,
        mode,
        create_parents,
        append,
        atomic,
    } = a;
    blocking(move || {
        let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        if create_parents {
            fs::create_dir_all(&parent)
                .map_err(|e| io_err("cannot create directory", &parent, e))?;
        } else if !parent.is_dir() {
            return Err(ToolError::Failed(format!(
                "cannot write {}: directory {} does not exist (set create_parents = true)",
                path.display(),
                parent.display()
            )));
        }
        if path.is_dir() {
            return Err(ToolError::Failed(format!(
                "cannot write {}: it is a directory",
                path.display()
            )));
        }
        let perm = mode.unwrap_or(0o644);
        if append {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(perm)
                .open(&path)
                .map_err(|e| io_err("cannot write", &path, e))?;
            f.write_all(&data)
                .map_err(|e| io_err("cannot write", &path, e))?;
        } else if atomic.unwrap_or(true) {
            // Keep the mode of a file being replaced unless a new one was asked for.
            let keep = fs::metadata(&path)
                .ok()
                .map(|m| m.permissions().mode() & 0o7777);
            let tmp = parent.join(format!(
                ".{}.fort-tmp-{}",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::process::id()
            ));
            let result = (|| -> std::io::Result<()> {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(perm)
                    .open(&tmp)?;
                f.write_all(&data)?;
                f.set_permissions(fs::Permissions::from_mode(mode.or(keep).unwrap_or(perm)))?;
                f.sync_all()?;
                fs::rename(&tmp, &path)
            })();
            if let Err(e) = result {
                let _ = fs::remove_file(&tmp);
                return Err(io_err("cannot write", &path, e));
            }
        } else {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(perm)
                .open(&path)
                .map_err(|e| io_err("cannot write", &path, e))?;
            f.write_all(&data)
                .map_err(|e| io_err("cannot write", &path, e))?;
        }
        if let (Some(m), true) = (mode, append || atomic == Some(false)) {
            fs::set_permissions(&path, fs::Permissions::from_mode(m))
                .map_err(|e| io_err("cannot chmod", &path, e))?;
        }
        Ok(Output {
            text: format!("wrote {} bytes to {}", data.len(), path.display()),
            structured: json!({"path": path, "bytes_written": data.len()}),
        })
    })
    .await
}

pub async fn delete(a: FileDelete) -> Result<Output, ToolError> {
    let path = abs(&a.path);
    blocking(move || {
        if path == Path::new("/") {
            return Err(ToolError::Failed("refusing to delete /".into()));
        }
        let meta = fs::symlink_metadata(&path).map_err(|e| io_err("cannot delete", &path, e))?;
        let r = if meta.is_dir() {
            if a.recursive {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_dir(&path).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::DirectoryNotEmpty {
                        std::io::Error::other("directory is not empty (set recursive = true)")
                    } else {
                        e
                    }
                })
            }
        } else {
            fs::remove_file(&path)
        };
        r.map_err(|e| io_err("cannot delete", &path, e))?;
        Ok(Output {
            text: format!("deleted {}", path.display()),
            structured: json!({"path": path, "deleted": true}),
        })
    })
    .await
}

fn kind(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_file() {
        "file"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "other"
    }
}

fn describe(path: &Path, m: &fs::Metadata) -> Value {
    json!({
        "path": path,
        "type": kind(m.file_type()),
        "size": m.len(),
        "mode": format!("{:04o}", m.mode() & 0o7777),
        "uid": m.uid(),
        "gid": m.gid(),
        "mtime": m.mtime(),
        "symlink_target": fs::read_link(path).ok(),
    })
}

pub async fn list_dir(a: PathArgs) -> Result<Output, ToolError> {
    let path = abs(&a.path);
    blocking(move || {
        let rd = fs::read_dir(&path).map_err(|e| io_err("cannot list", &path, e))?;
        let mut entries = Vec::new();
        let mut truncated = false;
        for e in rd.flatten() {
            if entries.len() >= LIST_CAP {
                truncated = true;
                break;
            }
            let p = e.path();
            if let Ok(m) = fs::symlink_metadata(&p) {
                let mut d = describe(&p, &m);
                d["name"] = json!(e.file_name().to_string_lossy());
                entries.push(d);
            }
        }
        entries.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
        let text = entries
            .iter()
            .map(|e| {
                let slash = if e["type"] == "directory" { "/" } else { "" };
                format!(
                    "{}{slash}\t{}\t{}",
                    e["name"].as_str().unwrap_or(""),
                    e["size"],
                    e["mode"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        Ok(Output {
            text,
            structured: json!({"path": path, "entries": entries, "truncated": truncated}),
        })
    })
    .await
}

pub async fn stat(a: PathArgs) -> Result<Output, ToolError> {
    let path = abs(&a.path);
    blocking(move || {
        let m = fs::symlink_metadata(&path).map_err(|e| io_err("cannot stat", &path, e))?;
        let d = describe(&path, &m);
        Ok(Output {
            text: format!(
                "{}: {} of {} bytes, mode {}",
                path.display(),
                d["type"].as_str().unwrap_or(""),
                m.len(),
                d["mode"].as_str().unwrap_or("")
            ),
            structured: d,
        })
    })
    .await
}
