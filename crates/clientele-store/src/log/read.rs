//! The read side of the log: scans in pages for rebuilding, and newest-first drill-down. Both
//! copy what they need out of the index under the lock and read the files without it.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use clientele_core::event::Event;
use clientele_core::record;
use clientele_core::time::DAY_MS;

use super::index::{ConsumerProbe, classes_of};
use super::{Inner, backend, day_of, segment};
use crate::{EventCursor, EventQuery, Result};

/// A block to read outside the lock.
struct ReadBlock {
    file: Arc<File>,
    path: PathBuf,
    seg_id: u32,
    day: i64,
    start: u64,
    end: u64,
    max_ts: i64,
}

fn cursor_of(day: i64, seg_id: u32, end: u64) -> EventCursor {
    EventCursor {
        ts_ms: day * DAY_MS,
        rowid: (i64::from(seg_id) << 32) | end as i64,
    }
}

impl Inner {
    /// The blocks after `after` holding events at or after `from_ms`, in scan order (day,
    /// segment, offset), enough for about `page` events.
    fn scan_plan(
        &self,
        from_ms: i64,
        after: Option<EventCursor>,
        page: usize,
    ) -> (Vec<ReadBlock>, bool) {
        let st = self.lock();
        let (after_day, after_seg, after_off) = match after {
            Some(c) => (
                day_of(c.ts_ms),
                (c.rowid >> 32) as u32,
                (c.rowid & 0xFFFF_FFFF) as u64,
            ),
            None => (i64::MIN, 0, 0),
        };
        let mut plan = Vec::new();
        let mut records = 0usize;
        for (&day, entry) in st.days.range(day_of(from_ms).max(after_day)..) {
            for seg in &entry.segments {
                if day == after_day && seg.id < after_seg {
                    continue;
                }
                for b in &seg.blocks {
                    let start = if day == after_day && seg.id == after_seg {
                        if b.end <= after_off {
                            continue;
                        }
                        b.start.max(after_off)
                    } else {
                        b.start
                    };
                    if b.max_ts < from_ms {
                        continue;
                    }
                    plan.push(ReadBlock {
                        file: seg.file.clone(),
                        path: seg.path.clone(),
                        seg_id: seg.id,
                        day,
                        start,
                        end: b.end,
                        max_ts: b.max_ts,
                    });
                    records += b.count as usize;
                    if records > page {
                        return (plan, true);
                    }
                }
            }
        }
        (plan, false)
    }

    pub(super) fn scan(
        &self,
        from_ms: i64,
        after: Option<EventCursor>,
        page: usize,
    ) -> Result<(Vec<Event>, Option<EventCursor>)> {
        let page = page.max(1);
        let mut out = Vec::with_capacity(page.min(65_536));
        let mut cursor = after;
        loop {
            // A plan covers about a page of records; events before `from_ms` inside its
            // blocks can leave the page short, so plan again from where this one ended.
            let (plan, more) = self.scan_plan(from_ms, cursor, page - out.len());
            for block in plan {
                let bytes = segment::read_range(&block.file, block.start, block.end)
                    .map_err(|e| backend("cannot read", &block.path, e))?;
                let mut full = false;
                let want = |h: &record::Head<'_>| h.ts_ms >= from_ms;
                segment::decode_frames(&bytes, block.start, &block.path, want, |event, end| {
                    if full {
                        return;
                    }
                    cursor = Some(cursor_of(block.day, block.seg_id, end));
                    out.extend(event);
                    full = out.len() >= page;
                });
                if full {
                    return Ok((out, cursor));
                }
            }
            if !more {
                return Ok((out, None));
            }
        }
    }

    pub(super) fn recent(&self, q: &EventQuery) -> Result<Vec<Event>> {
        if q.limit == 0 || q.from_ms >= q.to_ms {
            return Ok(Vec::new());
        }
        let probe = ConsumerProbe::new(&q.consumer);
        let classes = classes_of(q.status);
        let mut plan = Vec::new();
        {
            let st = self.lock();
            for (&day, entry) in st.days.range(day_of(q.from_ms)..=day_of(q.to_ms - 1)) {
                for seg in &entry.segments {
                    for b in seg
                        .blocks
                        .iter()
                        .filter(|b| b.may_hold(&probe, q.from_ms, q.to_ms, classes))
                    {
                        plan.push(ReadBlock {
                            file: seg.file.clone(),
                            path: seg.path.clone(),
                            seg_id: seg.id,
                            day,
                            start: b.start,
                            end: b.end,
                            max_ts: b.max_ts,
                        });
                    }
                }
            }
        }
        plan.sort_by_key(|b| std::cmp::Reverse(b.max_ts));
        let (lo, hi) = q.status.unwrap_or((0, u16::MAX));
        let mut out: Vec<Event> = Vec::new();
        for block in plan {
            // Newest first: once the answer is full and holds nothing older than what the next
            // block could offer, no later block can change it.
            if out.len() >= q.limit && out.last().is_some_and(|e| e.ts_ms > block.max_ts) {
                break;
            }
            let bytes = segment::read_range(&block.file, block.start, block.end)
                .map_err(|e| backend("cannot read", &block.path, e))?;
            let want = |h: &record::Head<'_>| {
                h.consumer == Some(q.consumer.as_str())
                    && h.ts_ms >= q.from_ms
                    && h.ts_ms < q.to_ms
                    && (lo..=hi).contains(&h.status)
            };
            segment::decode_frames(&bytes, block.start, &block.path, want, |e, _| {
                out.extend(e);
            });
            out.sort_by_key(|e| std::cmp::Reverse(e.ts_ms));
            out.truncate(q.limit);
        }
        Ok(out)
    }
}
