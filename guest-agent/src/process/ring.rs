//! The bounded output ring of one process: all its streams as one byte sequence (cursor =
//! byte offset since the process started), tagged by stream, oldest bytes dropped first.

use std::collections::VecDeque;

use fort_agent_protocol::process::Stream;

pub struct Ring {
    data: VecDeque<u8>,
    /// The cursor of `data[0]`: everything before it was dropped.
    start: u64,
    /// Where each run of one stream begins (cursor), in order; the first one may begin before
    /// `start` (its front was dropped).
    runs: VecDeque<(u64, Stream)>,
    cap: usize,
}

/// A read of the ring: the bytes of `[from, to)` split into runs of one stream.
pub struct Slice {
    pub from: u64,
    pub to: u64,
    pub runs: Vec<(Stream, u64, Vec<u8>)>,
}

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring {
            data: VecDeque::new(),
            start: 0,
            runs: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// The cursor after the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn push(&mut self, stream: Stream, mut bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let end = self.end();
        if self.runs.back().map(|r| r.1) != Some(stream) {
            self.runs.push_back((end, stream));
        }
        if bytes.len() > self.cap {
            // Only its tail can be kept; the rest is dropped as if it had been pushed.
            let skip = bytes.len() - self.cap;
            bytes = &bytes[skip..];
            self.start = end + skip as u64;
            self.data.clear();
        }
        let over = (self.data.len() + bytes.len()).saturating_sub(self.cap);
        if over > 0 {
            self.data.drain(..over);
            self.start += over as u64;
        }
        // Grow at most to the cap: amortized doubling past it would hold up to twice the
        // memory the ring may use.
        let need = self.data.len() + bytes.len();
        if need > self.data.capacity() {
            let want = (self.data.capacity() * 2).max(need).min(self.cap);
            self.data.reserve_exact(want - self.data.len());
        }
        self.data.extend(bytes);
        // Forget runs that end before the new start.
        while self.runs.len() > 1 && self.runs[1].0 <= self.start {
            self.runs.pop_front();
        }
    }

    /// Release the room the ring does not use (a finished process adds nothing more).
    pub fn shrink(&mut self) {
        self.data.shrink_to_fit();
        self.runs.shrink_to_fit();
    }

    /// At most `max` bytes from `from` (at least the ring's start) on.
    pub fn read(&self, from: u64, max: usize) -> Slice {
        let from = from.max(self.start).min(self.end());
        let to = (from + max as u64).min(self.end());
        let mut runs = Vec::new();
        for (i, &(begin, stream)) in self.runs.iter().enumerate() {
            let next = self.runs.get(i + 1).map_or(u64::MAX, |r| r.0);
            let (a, b) = (begin.max(from), next.min(to));
            if a < b {
                let lo = (a - self.start) as usize;
                let hi = (b - self.start) as usize;
                runs.push((stream, a, self.data.range(lo..hi).copied().collect()));
            }
        }
        Slice { from, to, runs }
    }
}

/// How many bytes at the end of `bytes` are the start of a UTF-8 character whose remaining
/// bytes have not come yet (0 when it ends on a boundary or with invalid bytes).
pub fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead
        }
        let len = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        return if len > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn text(s: &Slice) -> Vec<(Stream, u64, String)> {
        s.runs
            .iter()
            .map(|(st, c, b)| (*st, *c, String::from_utf8(b.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn streams_cursors_and_dropping_oldest_first() {
        let mut r = Ring::new(8);
        r.push(Stream::Stdout, b"abc");
        r.push(Stream::Stdout, b"de");
        r.push(Stream::Stderr, b"XY");
        assert_eq!(
            text(&r.read(0, 100)),
            [
                (Stream::Stdout, 0, "abcde".into()),
                (Stream::Stderr, 5, "XY".into())
            ]
        );
        assert_eq!(
            text(&r.read(4, 2)),
            [
                (Stream::Stdout, 4, "e".into()),
                (Stream::Stderr, 5, "X".into())
            ]
        );
        r.push(Stream::Stdout, b"1234");
        assert_eq!((r.start(), r.end()), (3, 11));
        let s = r.read(0, 100);
        assert_eq!(s.from, 3);
        assert_eq!(
            text(&s),
            [
                (Stream::Stdout, 3, "de".into()),
                (Stream::Stderr, 5, "XY".into()),
                (Stream::Stdout, 7, "1234".into())
            ]
        );
        // One push larger than the ring keeps its tail.
        r.push(Stream::Stderr, b"0123456789");
        assert_eq!((r.start(), r.end()), (13, 21));
        assert_eq!(
            text(&r.read(0, 100)),
            [(Stream::Stderr, 13, "23456789".into())]
        );
        assert_eq!(r.runs.len(), 1);
        assert!(r.data.capacity() <= 8 + 8, "{}", r.data.capacity());
    }

    #[test]
    fn utf8_tails() {
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
        assert_eq!(incomplete_utf8_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(&"é".as_bytes()[..1]), 1);
        assert_eq!(incomplete_utf8_tail(&"€".as_bytes()[..2]), 2);
        assert_eq!(incomplete_utf8_tail(&"😀".as_bytes()[..3]), 3);
        assert_eq!(incomplete_utf8_tail(b"a\xff"), 0);
    }
}
