//! The hand-off ring: a memory-mapped file that holds every event between the gateway and the
//! store, so that `kill -9` loses none of them.
//!
//! The gateway writes each event's frame ([`crate::record`]) into shared memory backed by
//! `data_dir/events.ring`: a `memcpy` under a short lock, no system call, no wait on a disk.
//! When the process dies the kernel still holds those pages and writes them to the file; the
//! next start replays every frame between the ring's tail (what the store has) and its head.
//! The writer moves the tail once a batch is stored. When the ring is full, new events are
//! dropped and counted, never waited for.
//!
//! A power loss can lose what is in the ring and not yet in the store: the writer drains it
//! every 50 ms and the store flushes every second.
//!
//! Layout: a 4 KiB header (magic, capacity, head, tail: positions that only grow, taken modulo
//! the capacity), then the data area. A frame never wraps: when one does not fit before the end,
//! the rest of the area is skipped (marked by a length of `u32::MAX` when there is room for it).

// The one place with unsafe code: mapping the file. See the SAFETY comment in `map`.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::{MmapMut, MmapOptions};

use crate::event::Event;
use crate::record::{self, FRAME_HEADER};

const MAGIC: &[u8; 8] = b"CLTRING1";
const DATA: usize = 4096;
const SKIP: u32 = u32::MAX;
const HEAD_AT: usize = 16;
const TAIL_AT: usize = 24;

pub struct Ring {
    path: PathBuf,
    map: MmapMut,
    capacity: u64,
    head: u64,
    tail: u64,
    /// Where each frame in the ring ends, oldest first, for [`Ring::release`].
    ends: VecDeque<u64>,
    /// Keeps the file (and its lock) open as long as the mapping.
    _file: File,
}

/// What replaying a ring found.
#[derive(Debug, Default)]
pub struct Replay {
    pub events: Vec<Event>,
    /// Where replay stopped before the head because a frame did not check, if it did.
    pub damaged_at: Option<u64>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("path", &self.path)
            .field("capacity", &self.capacity)
            .field("head", &self.head)
            .field("tail", &self.tail)
            .finish()
    }
}

fn read_u64(map: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&map[at..at + 8]);
    u64::from_le_bytes(b)
}

impl Ring {
    /// Opens the ring at `path`, or creates one with `capacity` bytes of data area (written out
    /// in full, so that a full disk shows now and never as a fault on the request path later).
    /// Returns the events left in it by the previous process, oldest first; they stay in the
    /// ring until released like any other.
    pub fn open(path: &Path, capacity: u64) -> std::io::Result<(Ring, Replay)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // `File::try_lock` is stable since Rust 1.89 and the toolchain here is 1.95; raising the
        // workspace's declared rust-version (1.85) turns on lints across every crate, which is a
        // change of its own.
        #[allow(clippy::incompatible_msrv)]
        let locked = file.try_lock();
        locked.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                format!("{} is in use by another clientele process", path.display()),
            )
        })?;
        let existing = file.metadata()?.len();
        if existing < DATA as u64 || !has_magic(&file)? {
            create(&file, capacity)?;
        }
        let map = map(&file)?;
        let capacity = read_u64(&map, 8);
        if map.len() as u64 != DATA as u64 + capacity || capacity == 0 {
            return Err(std::io::Error::other(format!(
                "{} is damaged (its size does not match its header); delete it to start with an empty ring",
                path.display()
            )));
        }
        let mut ring = Ring {
            path: path.to_path_buf(),
            head: read_u64(&map, HEAD_AT),
            tail: read_u64(&map, TAIL_AT),
            map,
            capacity,
            ends: VecDeque::new(),
            _file: file,
        };
        let replay = ring.replay();
        Ok((ring, replay))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the frames between tail and head. A frame that fails its check ends the replay
    /// there (the head is moved back to it, so it is overwritten, never read).
    fn replay(&mut self) -> Replay {
        let mut out = Replay::default();
        if self.head < self.tail || self.head - self.tail > self.capacity {
            out.damaged_at = Some(self.tail);
            self.head = self.tail;
            self.store_positions();
            return out;
        }
        let mut pos = self.tail;
        while pos < self.head {
            let (phys, room) = self.place(pos);
            if room < FRAME_HEADER || self.len_at(phys) == SKIP {
                pos += room as u64;
                continue;
            }
            let area = &self.map[DATA + phys..DATA + phys + room];
            match record::read_frame(area).and_then(|(p, len)| Ok((record::decode(p)?, len))) {
                Ok((event, len)) => {
                    pos += len as u64;
                    self.ends.push_back(pos);
                    out.events.push(event);
                }
                Err(_) => {
                    out.damaged_at = Some(pos);
                    self.head = pos;
                    self.store_positions();
                    break;
                }
            }
        }
        out
    }

    /// The physical offset of `pos` in the data area and the bytes left before its end.
    fn place(&self, pos: u64) -> (usize, usize) {
        let phys = (pos % self.capacity) as usize;
        (phys, self.capacity as usize - phys)
    }

    fn len_at(&self, phys: usize) -> u32 {
        let at = DATA + phys;
        u32::from_le_bytes([
            self.map[at],
            self.map[at + 1],
            self.map[at + 2],
            self.map[at + 3],
        ])
    }

    fn store_positions(&mut self) {
        self.map[HEAD_AT..HEAD_AT + 8].copy_from_slice(&self.head.to_le_bytes());
        self.map[TAIL_AT..TAIL_AT + 8].copy_from_slice(&self.tail.to_le_bytes());
    }

    /// Copies one frame in. `false` when the ring has no room for it (the caller drops and
    /// counts the event).
    pub fn push(&mut self, frame: &[u8]) -> bool {
        let len = frame.len();
        let (phys, room) = self.place(self.head);
        let skip = if room < len { room } else { 0 };
        let need = (skip + len) as u64;
        if len as u64 > self.capacity || self.head + need - self.tail > self.capacity {
            return false;
        }
        let mut pos = self.head;
        if skip > 0 {
            if room >= 4 {
                let at = DATA + phys;
                self.map[at..at + 4].copy_from_slice(&SKIP.to_le_bytes());
            }
            pos += skip as u64;
        }
        let (phys, _) = self.place(pos);
        self.map[DATA + phys..DATA + phys + len].copy_from_slice(frame);
        // The frame is complete before the head moves past it: a process that dies between
        // the two leaves the frame outside [tail, head), unread.
        self.head = pos + len as u64;
        self.ends.push_back(self.head);
        self.map[HEAD_AT..HEAD_AT + 8].copy_from_slice(&self.head.to_le_bytes());
        true
    }

    /// Takes back the frame pushed last (the hand-off behind the ring refused its event).
    pub fn unpush(&mut self) {
        self.ends.pop_back();
        self.head = self.ends.back().copied().unwrap_or(self.tail);
        self.map[HEAD_AT..HEAD_AT + 8].copy_from_slice(&self.head.to_le_bytes());
    }

    /// The oldest `n` frames are stored: their room may be reused.
    pub fn release(&mut self, n: usize) {
        for _ in 0..n {
            match self.ends.pop_front() {
                Some(end) => self.tail = end,
                None => break,
            }
        }
        if self.ends.is_empty() {
            self.tail = self.head;
        }
        self.map[TAIL_AT..TAIL_AT + 8].copy_from_slice(&self.tail.to_le_bytes());
    }

    /// Frames in the ring not yet released.
    pub fn pending(&self) -> usize {
        self.ends.len()
    }
}

fn has_magic(mut file: &File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 8];
    file.seek(SeekFrom::Start(0))?;
    Ok(file.read_exact(&mut magic).is_ok() && &magic == MAGIC)
}

/// Writes a fresh ring: header, then zeros over the whole data area, so that every page of it
/// has disk space before it is mapped.
fn create(mut file: &File, capacity: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    let mut header = vec![0u8; DATA];
    header[..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&capacity.to_le_bytes());
    file.write_all(&header)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = capacity;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

fn map(file: &File) -> std::io::Result<MmapMut> {
    // SAFETY: memmap2's `map_mut` is unsafe because another process (or this one, through
    // another handle) could truncate or rewrite the file while it is mapped, which would make
    // reads through the map undefined (or raise SIGBUS). The ring file lives in the server's
    // own data directory, is opened only here, and is held under an exclusive `flock` taken in
    // `Ring::open` for as long as the map lives (`Ring::_file`), so no other clientele process
    // maps it. Its whole length was written (not left sparse) before mapping, so no page of the
    // map lacks disk space. Every access goes through the bounds-checked slice of `MmapMut`.
    unsafe { MmapOptions::new().map_mut(file) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::Outcome;

    fn event(i: usize) -> Event {
        Event {
            id: format!("ev-{i}"),
            ts_ms: i as i64,
            consumer: Some("acme".into()),
            key_id: None,
            api: None,
            method: "GET".into(),
            path: "/x".repeat(i % 7),
            route: "/x".into(),
            status: 200,
            latency_ms: 1.0,
            upstream_latency_ms: None,
            request_bytes: 0,
            response_bytes: 0,
            client_ip: None,
            user_agent: None,
            session_id: None,
            end_user: None,
            trace_id: None,
            outcome: Outcome::Proxied,
            plan: None,
            team: None,
            use_case: None,
            model: None,
            tokens_in: None,
            tokens_out: None,
            cost_usd: None,
            close_code: None,
            call_hash: None,
            tokens_cached: None,
            tokens_cache_write: None,
            tokens_reasoning: None,
            tls_fp: None,
        }
    }

    fn frame(e: &Event) -> Vec<u8> {
        let mut f = Vec::new();
        record::encode_frame(e, &mut f);
        f
    }

    fn path() -> PathBuf {
        std::env::temp_dir().join(format!("clientele-ring-{}", crate::event::random_id128()))
    }

    #[test]
    fn what_was_not_released_is_replayed_after_a_crash() {
        let p = path();
        let (mut ring, replay) = Ring::open(&p, 4096).unwrap();
        assert!(replay.events.is_empty());
        for i in 0..10 {
            assert!(ring.push(&frame(&event(i))));
        }
        ring.release(4);
        // A crash: the map is dropped without anything else happening.
        drop(ring);
        let (ring, replay) = Ring::open(&p, 4096).unwrap();
        let ids: Vec<_> = replay.events.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids, (4..10).map(|i| format!("ev-{i}")).collect::<Vec<_>>());
        assert_eq!(ring.pending(), 6, "replayed events stay until released");
        assert_eq!(replay.damaged_at, None);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn a_full_ring_refuses_and_wraps_once_released() {
        let p = path();
        let (mut ring, _) = Ring::open(&p, 1024).unwrap();
        let mut pushed = 0;
        while ring.push(&frame(&event(pushed))) {
            pushed += 1;
        }
        assert!(pushed > 3);
        ring.release(pushed);
        // Many rounds through the area, frames of varied sizes, never torn.
        for round in 0..50 {
            for i in 0..3 {
                assert!(ring.push(&frame(&event(round * 3 + i))), "round {round}");
            }
            ring.release(2);
            drop(ring);
            let (r, replay) = Ring::open(&p, 1024).unwrap();
            assert_eq!(replay.events.len(), 1);
            assert_eq!(replay.events[0].id, format!("ev-{}", round * 3 + 2));
            ring = r;
            ring.release(1);
        }
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn a_damaged_frame_ends_the_replay_there() {
        let p = path();
        let (mut ring, _) = Ring::open(&p, 4096).unwrap();
        let f = frame(&event(0));
        for i in 0..3 {
            assert!(ring.push(&frame(&event(i))));
        }
        drop(ring);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[DATA + f.len() + 10] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let (_, replay) = Ring::open(&p, 4096).unwrap();
        assert_eq!(replay.events.len(), 1);
        assert_eq!(replay.damaged_at, Some(f.len() as u64));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn a_second_process_cannot_open_the_same_ring() {
        let p = path();
        let (_ring, _) = Ring::open(&p, 4096).unwrap();
        let err = Ring::open(&p, 4096).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        let _ = std::fs::remove_file(p);
    }
}
