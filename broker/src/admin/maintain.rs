//! Commands that need the database's single writer: `compact` and
//! `backup` (locally when the broker is stopped, through its admin
//! endpoint when it runs), and `restore` (broker stopped).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{AdminError, Remote};
use crate::config::Config;
use crate::storage::{RocksLog, RoomLog, StorageError};

/// Block cache of a database opened by an admin command.
const ADMIN_CACHE: usize = 8 << 20;

/// How long to wait for the running broker to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails unless `dir` holds a RocksDB database.
pub(super) fn require_database(dir: &Path) -> Result<(), AdminError> {
    if dir.join("CURRENT").is_file() {
        Ok(())
    } else {
        Err(AdminError::Usage(format!(
            "no Confab database in {}",
            dir.display()
        )))
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AdminError {
    let what = what.into();
    move |source| AdminError::Io { what, source }
}

/// Who can write the database now.
enum Writer {
    /// Nobody had it: this process opened it.
    Local(RocksLog),
    /// A running broker holds its lock.
    Running,
}

fn is_locked(e: &StorageError) -> bool {
    e.to_string().to_ascii_lowercase().contains("lock")
}

fn open_writer(dir: &Path) -> Result<Writer, AdminError> {
    require_database(dir)?;
    match RocksLog::open(dir, ADMIN_CACHE) {
        Ok(log) => Ok(Writer::Local(log)),
        Err(e) if is_locked(&e) => Ok(Writer::Running),
        Err(e) => Err(e.into()),
    }
}

/// `compact`.
pub(super) fn compact(config: &Config, remote: &Remote) -> Result<String, AdminError> {
    if remote.url.is_none() {
        if let Writer::Local(log) = open_writer(&config.data_dir)? {
            log.compact()?;
            log.flush()?;
            return Ok(format!("compacted {}\n", config.data_dir.display()));
        }
    }
    post(config, remote, "/admin/compact", "")
}

/// `backup`.
pub(super) fn backup(config: &Config, dest: &Path, remote: &Remote) -> Result<String, AdminError> {
    let dest = std::path::absolute(dest).map_err(io(format!("resolving {}", dest.display())))?;
    if dest.exists() {
        return Err(AdminError::Usage(format!(
            "{} already exists; a backup goes into a new directory",
            dest.display()
        )));
    }
    if remote.url.is_none() {
        if let Writer::Local(log) = open_writer(&config.data_dir)? {
            log.checkpoint(&dest)?;
            return Ok(format!("backup written to {}\n", dest.display()));
        }
    }
    let text = dest
        .to_str()
        .ok_or_else(|| AdminError::Usage(format!("{} is not valid UTF-8", dest.display())))?;
    post(config, remote, "/admin/backup", text)
}

/// `restore`: moves the current data directory aside, copies the backup
/// in its place, keeps the old `tls/` (the self-signed certificate clients
/// pin), and checks that the result opens.
pub(super) fn restore(config: &Config, backup: &Path) -> Result<String, AdminError> {
    require_database(backup)?;
    let dir = &config.data_dir;
    let mut kept = None;
    if dir.exists() {
        if dir.join("CURRENT").is_file() {
            if let Writer::Running = open_writer(dir)? {
                return Err(AdminError::Usage(format!(
                    "a broker is running on {}; stop it before restoring",
                    dir.display()
                )));
            }
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut aside = dir.as_os_str().to_owned();
        aside.push(format!(".before-restore-{secs}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(dir, &aside).map_err(io(format!(
            "moving {} to {}",
            dir.display(),
            aside.display()
        )))?;
        kept = Some(aside);
    }
    copy_dir(backup, dir)?;
    if let Some(aside) = &kept {
        let tls = aside.join("tls");
        if tls.is_dir() && !dir.join("tls").exists() {
            copy_dir(&tls, &dir.join("tls"))?;
        }
    }
    let log = RocksLog::open(dir, ADMIN_CACHE)?;
    log.flush()?;
    drop(log);
    let mut out = format!("restored {} from {}\n", dir.display(), backup.display());
    if let Some(aside) = kept {
        out.push_str(&format!("the previous data is in {}\n", aside.display()));
    }
    Ok(out)
}

/// Copies a directory tree (a checkpoint is flat; `tls/` is one level).
fn copy_dir(from: &Path, to: &Path) -> Result<(), AdminError> {
    std::fs::create_dir_all(to).map_err(io(format!("creating {}", to.display())))?;
    let entries = std::fs::read_dir(from).map_err(io(format!("reading {}", from.display())))?;
    for entry in entries {
        let entry = entry.map_err(io(format!("reading {}", from.display())))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(io(format!("reading {}", path.display())))?;
        if kind.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target).map_err(io(format!(
                "copying {} to {}",
                path.display(),
                target.display()
            )))?;
        }
    }
    Ok(())
}

/// Where the running broker's operations endpoint is.
fn endpoint(config: &Config, remote: &Remote) -> Result<SocketAddr, AdminError> {
    let text = match (&remote.url, config.metrics.listen) {
        (Some(url), _) => url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned(),
        (None, Some(addr)) if addr.ip().is_unspecified() => {
            format!("127.0.0.1:{}", addr.port())
        }
        (None, Some(addr)) => addr.to_string(),
        (None, None) => {
            return Err(AdminError::Usage(
                "the broker is running (its database is locked) and metrics.listen is off: \
                 turn on its operations endpoint or stop it"
                    .into(),
            ))
        }
    };
    text.to_socket_addrs()
        .map_err(io(format!("resolving {text}")))?
        .next()
        .ok_or_else(|| AdminError::Usage(format!("`{text}` resolves to no address")))
}

fn token(config: &Config, remote: &Remote) -> Result<Option<String>, AdminError> {
    let file = match &remote.token_file {
        Some(f) => f.clone(),
        None if config.admin.token_file.as_os_str().is_empty() => return Ok(None),
        None => config.admin.token_file.clone(),
    };
    let text = std::fs::read_to_string(&file).map_err(io(format!("reading {}", file.display())))?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
}

/// One HTTP/1.1 POST to the running broker's admin endpoint.
fn post(config: &Config, remote: &Remote, path: &str, body: &str) -> Result<String, AdminError> {
    let addr = endpoint(config, remote)?;
    let token = token(config, remote)?;
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(io(format!("connecting to the broker at {addr}")))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(io(format!("sending to {addr}")))?;
    // Compaction and backups take as long as they take: no read timeout.
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(io(format!("reading the answer of {addr}")))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(body.to_owned())
    } else {
        Err(AdminError::Remote(format!(
            "HTTP {status}: {}",
            body.trim_end()
        )))
    }
}
