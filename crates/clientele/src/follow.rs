//! `clientele import --follow FILE`: tails a growing access log into `POST /v1/events`.
//!
//! Exactly once across restarts: after every batch the server accepted, the follower saves the
//! file's identity (device and inode) and the byte offset just past the last line sent, to a
//! state file written atomically (temporary file, fsync, rename, fsync of the folder). A
//! follower killed between the server's answer and the save re-sends at most that one batch,
//! and the server drops those as duplicates, since every line keeps its content-derived id.
//!
//! Rotation as logrotate does it:
//! - rename (`create`): FILE gets a new inode. The old file is read to its end (after one quiet
//!   poll, since the writer may append until it reopens), then FILE is followed from 0. A
//!   follower restarted after a rotation finds the old file by its inode among FILE's siblings
//!   (`access.log.1`) and finishes it first.
//! - `copytruncate`: same inode, but shorter than the offset: FILE is read again from 0.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clientele_http::Outbound;
use http_body_util::Full;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::logformat::{Format, convert_line};
use crate::logimport::{Answered, Batch, Origin, send_batch, trim_line};

pub struct Follow {
    pub path: PathBuf,
    pub state: PathBuf,
    pub batch: usize,
    pub format: Option<Format>,
    pub poll: Duration,
    pub json: bool,
    pub http: Outbound<Full<Bytes>>,
    pub base: String,
    pub token: String,
}

/// `.access.log.clientele-follow` beside `access.log`: outside logrotate's usual globs.
pub fn default_state_path(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "log".into());
    file.with_file_name(format!(".{name}.clientele-follow"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    path: String,
    dev: u64,
    ino: u64,
    offset: u64,
}

/// The file being read: its identity, the offset committed (sent and accepted) and the bytes
/// read past it that do not yet end in a newline.
struct Cursor {
    file: File,
    id: Identity,
    /// Offset of the first byte of `pending`.
    offset: u64,
    pending: Vec<u8>,
    /// For messages: which file this is.
    name: String,
}

impl Cursor {
    fn open(path: &Path, offset: u64) -> Result<Cursor> {
        let mut file =
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let id = Identity::of(&file.metadata()?);
        file.seek(SeekFrom::Start(offset))?;
        Ok(Cursor {
            file,
            id,
            offset,
            pending: Vec::new(),
            name: path.display().to_string(),
        })
    }

    fn rewind(&mut self) -> Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.offset = 0;
        self.pending.clear();
        Ok(())
    }
}

#[derive(Default)]
struct Totals {
    lines: u64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    rotations: u64,
}

pub async fn run(f: Follow) -> Result<()> {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let mut totals = Totals::default();
    let mut cur = resume(&f, &bar, &mut totals).await?;
    let mut quiet_since_rotation = false;
    loop {
        let sent = drain(&f, &mut cur, &mut totals, &bar).await?;
        if sent {
            quiet_since_rotation = false;
            continue;
        }
        // Nothing new in the open file: has FILE been rotated?
        match std::fs::metadata(&f.path) {
            Ok(meta) if Identity::of(&meta) != cur.id => {
                // Renamed away and recreated. The writer may still append to the old file
                // until it reopens its log, so switch only after one quiet poll.
                if quiet_since_rotation {
                    finish_partial(&f, &mut cur, &mut totals, &bar).await?;
                    cur = Cursor::open(&f.path, 0)?;
                    save(&f, &cur)?;
                    totals.rotations += 1;
                    quiet_since_rotation = false;
                    status(&f, &cur, &totals, &bar, "rotated");
                    continue;
                }
                quiet_since_rotation = true;
            }
            Ok(meta) if meta.len() < cur.offset + cur.pending.len() as u64 => {
                // copytruncate: same file, emptied. Lines after the last accepted batch that
                // were copied away before the truncation are in the copy, not here.
                cur.rewind()?;
                save(&f, &cur)?;
                totals.rotations += 1;
                status(&f, &cur, &totals, &bar, "truncated");
                continue;
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(f.poll) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    bar.finish_and_clear();
    status(&f, &cur, &totals, &bar, "stopped");
    Ok(())
}

/// Where to start: the saved file and offset, the old file after a rotation while stopped, or
/// the start of FILE when nothing was saved.
async fn resume(f: &Follow, bar: &ProgressBar, totals: &mut Totals) -> Result<Cursor> {
    let saved: Option<State> = match std::fs::read(&f.state) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not a follow state file; delete it to start FILE from the beginning",
                f.state.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("cannot read {}: {e}", f.state.display()),
    };
    let meta =
        std::fs::metadata(&f.path).with_context(|| format!("cannot read {}", f.path.display()))?;
    let Some(saved) = saved else {
        return Cursor::open(&f.path, 0);
    };
    let want = Identity {
        dev: saved.dev,
        ino: saved.ino,
    };
    if Identity::of(&meta) == want {
        let offset = if meta.len() < saved.offset {
            0
        } else {
            saved.offset
        };
        return Cursor::open(&f.path, offset);
    }
    // FILE was rotated while stopped: finish the old file if it is still beside FILE.
    match rotated_sibling(&f.path, want) {
        Some(old) => {
            let mut cur = Cursor::open(&old, saved.offset)?;
            while drain(f, &mut cur, totals, bar).await? {}
            finish_partial(f, &mut cur, totals, bar).await?;
            totals.rotations += 1;
        }
        None => eprintln!(
            "warning: {} was rotated and the file followed before is gone; lines written to it after offset {} were not imported",
            f.path.display(),
            saved.offset
        ),
    }
    let cur = Cursor::open(&f.path, 0)?;
    save(f, &cur)?;
    Ok(cur)
}

/// A file beside `path` whose name starts with its name (`access.log.1`, `access.log-20261201`)
/// and that is the file `want`.
fn rotated_sibling(path: &Path, want: Identity) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .find(|e| e.metadata().is_ok_and(|m| Identity::of(&m) == want))
        .map(|e| e.path())
}

/// Reads what is new, sends it in batches, commits the offset after each accepted batch.
/// Answers whether anything was read.
async fn drain(
    f: &Follow,
    cur: &mut Cursor,
    totals: &mut Totals,
    bar: &ProgressBar,
) -> Result<bool> {
    let mut chunk = vec![0u8; 1 << 20];
    let mut any = false;
    loop {
        let n = cur
            .file
            .read(&mut chunk)
            .with_context(|| format!("reading {}", cur.name))?;
        if n == 0 {
            return Ok(any);
        }
        any = true;
        cur.pending.extend_from_slice(&chunk[..n]);
        // Send every complete line; keep the unfinished tail for the next read.
        while let Some(end) = complete_lines_end(&cur.pending, f.batch) {
            let lines: Vec<u8> = cur.pending.drain(..end).collect();
            send(f, cur, &lines, end as u64, totals, bar).await?;
        }
    }
}

/// The end of the first `max` complete lines in `buf`, if there is a complete line.
fn complete_lines_end(buf: &[u8], max: usize) -> Option<usize> {
    let mut end = None;
    for (count, (i, _)) in buf
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .enumerate()
    {
        end = Some(i + 1);
        if count + 1 >= max {
            break;
        }
    }
    end
}

/// At the end of a rotated file, a last line without a newline is still a line.
async fn finish_partial(
    f: &Follow,
    cur: &mut Cursor,
    totals: &mut Totals,
    bar: &ProgressBar,
) -> Result<()> {
    if cur.pending.is_empty() {
        return Ok(());
    }
    let lines = std::mem::take(&mut cur.pending);
    let len = lines.len() as u64;
    send(f, cur, &lines, len, totals, bar).await
}

/// Sends `lines` (which start at `cur.offset`), waiting out an unavailable server, then
/// commits `cur.offset + consumed`.
async fn send(
    f: &Follow,
    cur: &mut Cursor,
    lines: &[u8],
    consumed: u64,
    totals: &mut Totals,
    bar: &ProgressBar,
) -> Result<()> {
    let mut body = Vec::new();
    let mut origins = Vec::new();
    for (i, line) in lines.split(|b| *b == b'\n').enumerate() {
        let text = trim_line(line);
        if text.is_empty() {
            continue;
        }
        totals.lines += 1;
        match convert_line(text, f.format) {
            Ok(event) => {
                // Serializing a JSON value cannot fail.
                let _ = serde_json::to_writer(&mut body, &event);
                body.push(b'\n');
                origins.push(Origin { file: 0, line: i });
            }
            Err(reason) => {
                totals.rejected += 1;
                eprintln!("{} at byte {}: {reason}", cur.name, cur.offset);
            }
        }
    }
    if !origins.is_empty() {
        let body = body;
        loop {
            let batch = Batch {
                body: body.clone(),
                origins: origins.clone(),
            };
            let (_, result) =
                send_batch(f.http.clone(), f.base.clone(), f.token.clone(), batch).await;
            match result {
                Ok(answer) => {
                    let answer = Answered::of(&answer);
                    totals.accepted += answer.accepted;
                    totals.duplicates += answer.duplicates;
                    totals.rejected += answer.rejected.len() as u64;
                    for (_, error) in answer.rejected.iter().take(3) {
                        eprintln!(
                            "{}: rejected: {}",
                            cur.name,
                            error.as_deref().unwrap_or("?")
                        );
                    }
                    break;
                }
                Err(e) if e.retry => {
                    // Following is long-running: a server restart is waited out, not fatal.
                    // The offset is not moved, so nothing is lost meanwhile.
                    bar.set_message(format!("{}; retrying", e.message));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => bail!(e.message),
            }
        }
    }
    cur.offset += consumed;
    save(f, cur)?;
    status(f, cur, totals, bar, "sent");
    Ok(())
}

fn status(f: &Follow, cur: &Cursor, t: &Totals, bar: &ProgressBar, what: &str) {
    if f.json {
        println!(
            "{}",
            json!({"event": what, "file": cur.name, "offset": cur.offset, "lines": t.lines, "accepted": t.accepted,
                "duplicates": t.duplicates, "rejected": t.rejected, "rotations": t.rotations})
        );
    } else if what == "stopped" {
        println!(
            "followed {}: {} lines, {} accepted ({} already imported), {} rejected, {} rotations; offset {} saved in {}",
            cur.name,
            t.lines,
            t.accepted,
            t.duplicates,
            t.rejected,
            t.rotations,
            cur.offset,
            f.state.display()
        );
    }
    bar.set_message(format!(
        "following {} at byte {}: {} accepted, {} rejected, {} rotations",
        cur.name, cur.offset, t.accepted, t.rejected, t.rotations
    ));
    bar.tick();
}

/// Writes the state so that a crash at any point leaves the old state or the new one.
fn save(f: &Follow, cur: &Cursor) -> Result<()> {
    let state = State {
        path: f.path.display().to_string(),
        dev: cur.id.dev,
        ino: cur.id.ino,
        offset: cur.offset,
    };
    let mut tmp = f.state.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        // Serializing this struct cannot fail.
        let _ = serde_json::to_writer(&mut file, &state);
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &f.state)?;
        if let Some(dir) = f.state.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().with_context(|| {
        format!(
            "cannot save the follow offset to {}; pass --state PATH somewhere writable",
            f.state.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_stop_at_the_batch_size_and_keep_the_tail() {
        assert_eq!(complete_lines_end(b"a\nb\nc", 10), Some(4));
        assert_eq!(complete_lines_end(b"a\nb\nc\n", 2), Some(4));
        assert_eq!(complete_lines_end(b"abc", 10), None);
    }

    #[test]
    fn state_path_is_hidden_beside_the_log() {
        assert_eq!(
            default_state_path(Path::new("/var/log/nginx/access.log")),
            PathBuf::from("/var/log/nginx/.access.log.clientele-follow")
        );
    }
}
