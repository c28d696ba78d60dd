//! Adaptive read-ahead for one open file, after mountpoint-s3's prefetcher.
//!
//! A reader that goes forward gets a window of prefetched bytes ahead of it that starts small
//! and doubles each time the reader consumes half of what was prefetched, up to a cap (a share
//! of the cache). The kernel issues reads slightly out of order, so a read a little behind or
//! a little ahead of the expected offset still counts as sequential. Anything else is random
//! access: the window collapses and only the chunks a read touches are fetched.

/// Tuning.
#[derive(Debug, Clone)]
pub struct ReadAheadConfig {
    /// Window after the first sequential read.
    pub initial: u64,
    /// Largest window.
    pub max: u64,
}

/// How far behind the expected offset a read may start and still be sequential.
pub const BACKWARD_TOLERANCE: u64 = 1 << 20;
/// How far ahead of it.
pub const FORWARD_TOLERANCE: u64 = 16 << 20;

/// Per-file read-ahead state.
#[derive(Debug)]
pub struct ReadAhead {
    config: ReadAheadConfig,
    /// Where the next sequential read is expected to start.
    expected: u64,
    /// Current window; 0 while the access looks random.
    window: u64,
    /// End of what was handed to prefetch so far.
    prefetched_until: u64,
}

impl ReadAhead {
    pub fn new(config: ReadAheadConfig) -> Self {
        Self {
            config,
            expected: 0,
            window: 0,
            prefetched_until: 0,
        }
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    /// Records a read of `[offset, offset + length)`; returns the range to prefetch, if any.
    pub fn on_read(&mut self, offset: u64, length: u64) -> Option<(u64, u64)> {
        let end = offset + length;
        let sequential = offset + BACKWARD_TOLERANCE >= self.expected
            && offset <= self.expected.saturating_add(FORWARD_TOLERANCE);
        if !sequential {
            self.window = 0;
            self.expected = end;
            self.prefetched_until = end;
            return None;
        }
        self.expected = self.expected.max(end);
        if self.window == 0 {
            self.window = self.config.initial;
        } else if self.prefetched_until.saturating_sub(end) >= self.window / 2 {
            return None; // still well ahead of the reader
        } else {
            // The reader ate half the window: it keeps up, so give it more.
            self.window = (self.window * 2).min(self.config.max);
        }
        if self.window == 0 {
            return None; // read-ahead switched off
        }
        let from = self.prefetched_until.max(end);
        let target = end + self.window;
        self.prefetched_until = target;
        (from < target).then_some((from, target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn readahead() -> ReadAhead {
        ReadAhead::new(ReadAheadConfig {
            initial: MIB,
            max: 16 * MIB,
        })
    }

    #[test]
    fn sequential_reads_grow_the_window_to_the_cap() {
        let mut ra = readahead();
        let mut windows = Vec::new();
        let mut offset = 0;
        while offset < 64 * MIB {
            ra.on_read(offset, 128 << 10);
            windows.push(ra.window());
            offset += 128 << 10;
        }
        assert_eq!(windows[0], MIB);
        assert!(windows.windows(2).all(|w| w[1] >= w[0]), "never shrinks");
        assert_eq!(*windows.last().unwrap(), 16 * MIB);
    }

    #[test]
    fn prefetch_ranges_are_contiguous_and_ahead_of_the_reader() {
        let mut ra = readahead();
        let mut covered = 0;
        let mut offset = 0;
        while offset < 32 * MIB {
            if let Some((from, to)) = ra.on_read(offset, 128 << 10) {
                assert!(
                    from >= offset + (128 << 10),
                    "prefetch starts after the read"
                );
                assert!(from <= covered.max(offset + (128 << 10)), "no gap");
                covered = to;
            }
            offset += 128 << 10;
        }
        assert!(covered > 32 * MIB);
    }

    #[test]
    fn small_reordering_stays_sequential() {
        let mut ra = readahead();
        let k = 128 << 10;
        ra.on_read(0, k);
        ra.on_read(2 * k, k); // the kernel skipped ahead a little
        ra.on_read(k, k); // ... and came back
        ra.on_read(3 * k, k);
        assert!(ra.window() > 0);
    }

    #[test]
    fn random_access_fetches_exactly() {
        let mut ra = readahead();
        ra.on_read(0, MIB);
        assert_eq!(ra.on_read(3 << 30, MIB), None, "a jump far ahead is random");
        assert_eq!(ra.window(), 0);
        assert_eq!(ra.on_read(100 * MIB, MIB), None, "a jump back is random");
        // Reading on from there becomes sequential again.
        assert!(ra.on_read(101 * MIB, MIB).is_some());
    }

    #[test]
    fn a_first_read_far_into_the_file_is_random() {
        let mut ra = readahead();
        assert_eq!(ra.on_read(3 << 30, MIB), None);
    }
}
