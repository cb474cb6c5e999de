//! One segment file: a header, then checksummed event frames (`clientele_core::record`),
//! appended and never rewritten. A segment holds events of one UTC day of event time, so
//! retention deletes whole files.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clientele_core::event::Event;
use clientele_core::record::{self, FRAME_HEADER, Head, MAX_PAYLOAD, RecordError};

use super::index::Block;

const MAGIC: &[u8; 8] = b"CLTEVLG1";
pub const HEADER_LEN: u64 = 16;
/// A day's segment is closed and a new one started past this size, which bounds what one
/// damaged file can take with it.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;

/// Where a segment stopped being readable, found at start-up.
#[derive(Debug, Clone)]
pub struct Damage {
    pub offset: u64,
    pub reason: String,
}

pub struct Segment {
    pub path: PathBuf,
    pub seq: u32,
    /// Orders segments for scan cursors; unique within one open of the log.
    pub id: u32,
    pub file: Arc<File>,
    /// Bytes of whole, verified frames (and the header): where the next frame goes.
    pub len: u64,
    pub count: u64,
    pub blocks: Vec<Block>,
    /// No more appends: full, or damaged (what follows the damage is never read or overwritten).
    pub sealed: bool,
}

pub fn file_name(day: i64, seq: u32) -> String {
    format!("{day}_{seq}.seg")
}

/// The (day, seq) of a segment's file name; `None` for other files.
pub fn parse_name(name: &str) -> Option<(i64, u32)> {
    let stem = name.strip_suffix(".seg")?;
    let (day, seq) = stem.rsplit_once('_')?;
    Some((day.parse().ok()?, seq.parse().ok()?))
}

impl Segment {
    /// Creates an empty segment for `day`; fails if the file exists.
    pub fn create(dir: &Path, day: i64, seq: u32, id: u32) -> std::io::Result<Segment> {
        let path = dir.join(file_name(day, seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&day.to_le_bytes());
        if let Err(e) = file.write_all_at(&header, 0) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Segment {
            path,
            seq,
            id,
            file: Arc::new(file),
            len: HEADER_LEN,
            count: 0,
            blocks: Vec::new(),
            sealed: false,
        })
    }

    /// Opens a segment, checking every frame's checksum and calling `visit` with each event.
    /// Reading stops at the first frame that is damaged or cut short; that place is returned
    /// and the segment is sealed there, so nothing after it is ever read or overwritten.
    pub fn open(
        path: &Path,
        day: i64,
        seq: u32,
        id: u32,
        mut visit: impl FnMut(&Head<'_>),
    ) -> std::io::Result<(Segment, Option<Damage>)> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let size = file.metadata()?.len();
        let mut seg = Segment {
            path: path.to_path_buf(),
            seq,
            id,
            file: Arc::new(file),
            len: HEADER_LEN,
            count: 0,
            blocks: Vec::new(),
            sealed: false,
        };
        let file = seg.file.clone();
        let mut reader = BufReader::with_capacity(1 << 20, &*file);
        let mut header = [0u8; HEADER_LEN as usize];
        if reader.read_exact(&mut header).is_err()
            || &header[..8] != MAGIC
            || header[8..] != day.to_le_bytes()
        {
            seg.sealed = true;
            seg.len = 0;
            let reason = "not a segment header (wrong magic or day)".to_string();
            return Ok((seg, Some(Damage { offset: 0, reason })));
        }
        let mut frame = Vec::with_capacity(4096);
        let mut offset = HEADER_LEN;
        let damage = loop {
            if offset == size {
                break None;
            }
            match read_one(&mut reader, &mut frame) {
                Ok((head, len)) => {
                    let end = offset + len as u64;
                    seg.index(offset, end, &head);
                    visit(&head);
                    offset = end;
                }
                Err(reason) => break Some(Damage { offset, reason }),
            }
        };
        seg.len = offset;
        seg.sealed = damage.is_some() || offset >= MAX_SEGMENT_BYTES;
        Ok((seg, damage))
    }

    /// Adds the frame `[start, end)` holding `event` to the block index.
    pub fn index(&mut self, start: u64, end: u64, event: &Head<'_>) {
        if self.blocks.last().is_none_or(Block::is_full) {
            self.blocks.push(Block::new(start));
        }
        if let Some(block) = self.blocks.last_mut() {
            block.add(end, event.id, event.ts_ms, event.status, event.consumer);
        }
        self.count += 1;
        self.len = end;
    }

    /// Whether `bytes` more fit before the segment should be closed.
    pub fn has_room(&self, bytes: u64) -> bool {
        !self.sealed && (self.len == HEADER_LEN || self.len + bytes <= MAX_SEGMENT_BYTES)
    }

    /// Writes frames at the end. On failure (a full disk) the file is cut back to its last
    /// whole frame, so a failed write never leaves a torn frame behind.
    pub fn write(&self, frames: &[u8]) -> std::io::Result<()> {
        match self.file.write_all_at(frames, self.len) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Cuts the file back to its last whole frame (after a write of a batch failed part-way).
    pub fn rollback(&self) {
        if let Err(e) = self.file.set_len(self.len) {
            tracing::error!(file = %self.path.display(), error = %e, "cannot cut a failed write back; the segment is read only up to its last whole frame");
        }
    }
}

/// Reads one frame into `buf`, checks it and reads its head (whole frames only: a frame's
/// checksum covers all of it, the head is what the index needs).
fn read_one<'b>(reader: &mut impl Read, buf: &'b mut Vec<u8>) -> Result<(Head<'b>, usize), String> {
    buf.resize(FRAME_HEADER, 0);
    reader
        .read_exact(buf)
        .map_err(|_| "the segment ends inside a frame header".to_string())?;
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return Err(RecordError::BadLength(len as u32).to_string());
    }
    buf.resize(FRAME_HEADER + len, 0);
    reader
        .read_exact(&mut buf[FRAME_HEADER..])
        .map_err(|_| "the segment ends inside a frame".to_string())?;
    let (payload, len) = record::read_frame(buf).map_err(|e| e.to_string())?;
    Ok((
        record::decode_head(payload).map_err(|e| e.to_string())?,
        len,
    ))
}

/// Reads `[start, end)` of a segment file.
pub fn read_range(file: &File, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut buf, start)?;
    Ok(buf)
}

/// Decodes the frames of `bytes`, read from `path` at `base`, calling `f` with each event that
/// `want` accepts (given its head, before the rest is decoded) and the offset after its frame.
/// Frames were checked at start-up; one that no longer checks (the disk changed under us) is
/// reported with its place and the rest of the range is skipped, never misread.
pub fn decode_frames(
    bytes: &[u8],
    base: u64,
    path: &Path,
    want: impl Fn(&Head<'_>) -> bool,
    mut f: impl FnMut(Option<Event>, u64),
) {
    let mut at = 0usize;
    while at < bytes.len() {
        let decoded = record::read_frame(&bytes[at..]).and_then(|(payload, len)| {
            let head = record::decode_head(payload)?;
            let event = want(&head).then(|| record::decode(payload)).transpose()?;
            Ok((event, len))
        });
        match decoded {
            Ok((event, len)) => {
                at += len;
                f(event, base + at as u64);
            }
            Err(e) => {
                tracing::error!(file = %path.display(), offset = base + at as u64, error = %e, "a stored event frame no longer matches its checksum; skipping the rest of the block");
                return;
            }
        }
    }
}
