//! Reading a placeholder: the bytes come from the chunk cache (range mode) or from the
//! stream spool (a plain MSC2354 sender), and the whole-file digest is checked once every
//! byte has been read.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::cache::spool::SpoolReader;
use crate::cache::{CachedFile, SourceError};
use crate::hex;

/// Where an accepted offer's bytes are read from.
pub enum Reader {
    /// Range mode: any range on demand, through the cache; digest checked here.
    Range {
        file: Arc<CachedFile>,
        verifier: Box<tokio::sync::Mutex<Verifier>>,
    },
    /// Stream mode: the spool, which holds back the end until the engine checked the digest.
    Spool(SpoolReader),
}

impl Reader {
    pub fn range(file: CachedFile, sha256: Option<&str>) -> Self {
        let size = file.size();
        Self::Range {
            file: Arc::new(file),
            verifier: Box::new(tokio::sync::Mutex::new(Verifier::new(size, sha256))),
        }
    }

    /// The bytes `[offset, offset + length)` (cut at the end of the file).
    pub async fn read(&self, offset: u64, length: u64) -> Result<Bytes, SourceError> {
        match self {
            Self::Spool(spool) => spool.read(offset, length).await,
            Self::Range { file, verifier } => {
                let data = tokio::time::timeout(RANGE_READ_LIMIT, file.read(offset, length))
                    .await
                    .map_err(|_| {
                        SourceError(format!(
                            "the sender stopped answering (no data for {} s)",
                            RANGE_READ_LIMIT.as_secs()
                        ))
                    })??;
                let mut verifier = verifier.lock().await;
                verifier.absorb(offset, &data);
                // Bytes read earlier whose digest was not taken yet (they arrived out of
                // order and did not fit the stash): read them again, from the cache.
                while let Some((from, to)) = verifier.gap() {
                    let again = file.read_quietly(from, (to - from).min(1 << 20)).await?;
                    if again.is_empty() {
                        break;
                    }
                    verifier.absorb(from, &again);
                }
                match verifier.verdict() {
                    Some(Err(error)) => Err(SourceError(error.clone())),
                    _ => Ok(data),
                }
            }
        }
    }

    /// Every byte was read and matched the advertised digest.
    pub fn verified(&self) -> bool {
        match self {
            Self::Spool(spool) => spool.is_complete(),
            Self::Range { verifier, .. } => verifier
                .try_lock()
                .map(|v| matches!(v.verdict(), Some(Ok(()))))
                .unwrap_or(false),
        }
    }
}

/// How long one read may wait for its bytes in range mode (a few MiB at most) before the
/// sender counts as gone: a read never hangs on a link that died without a word.
const RANGE_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// How many out-of-order bytes are kept for the digest before they are dropped (and read
/// again from the cache when their turn comes).
const STASH_LIMIT: u64 = 8 << 20;

/// Hashes what readers see, in file order, and compares at the end.
pub struct Verifier {
    size: u64,
    expected: Option<String>,
    hasher: Sha256,
    /// Bytes `[0, hashed)` went into the digest.
    hashed: u64,
    /// Pieces read ahead of `hashed`, by offset.
    stash: BTreeMap<u64, Bytes>,
    stash_bytes: u64,
    /// Ranges readers have seen, sorted, merged.
    covered: Vec<(u64, u64)>,
    verdict: Option<Result<(), String>>,
}

impl Verifier {
    pub fn new(size: u64, expected: Option<&str>) -> Self {
        Self {
            size,
            expected: expected.map(str::to_owned),
            hasher: Sha256::new(),
            hashed: 0,
            stash: BTreeMap::new(),
            stash_bytes: 0,
            covered: Vec::new(),
            verdict: None,
        }
    }

    /// `Some` once every byte was hashed: whether the digest matched (or none was offered).
    pub fn verdict(&self) -> Option<&Result<(), String>> {
        self.verdict.as_ref()
    }

    /// Takes in bytes a reader saw at `offset`.
    pub fn absorb(&mut self, offset: u64, data: &Bytes) {
        if data.is_empty() || self.verdict.is_some() {
            return;
        }
        let end = offset + data.len() as u64;
        self.cover(offset, end);
        if offset <= self.hashed && end > self.hashed {
            let skip = (self.hashed - offset) as usize;
            self.hasher.update(&data[skip..]);
            self.hashed = end;
            self.drain_stash();
        } else if offset > self.hashed && self.stash_bytes + data.len() as u64 <= STASH_LIMIT {
            self.stash_bytes += data.len() as u64;
            // A copy: `data` may share a cache chunk, which the stash must not keep alive.
            if let Some(old) = self.stash.insert(offset, Bytes::copy_from_slice(data)) {
                self.stash_bytes -= old.len() as u64;
            }
        }
        if self.hashed >= self.size {
            self.conclude();
        }
    }

    /// Bytes readers have seen that must be read again to continue the digest.
    pub fn gap(&self) -> Option<(u64, u64)> {
        if self.verdict.is_some() {
            return None;
        }
        let (start, end) = *self.covered.first()?;
        if start > 0 || end <= self.hashed || self.stash.contains_key(&self.hashed) {
            return None;
        }
        let until = self
            .stash
            .range(self.hashed..)
            .next()
            .map_or(end, |(offset, _)| (*offset).min(end));
        (until > self.hashed).then_some((self.hashed, until))
    }

    fn drain_stash(&mut self) {
        while let Some((&offset, _)) = self.stash.first_key_value() {
            if offset > self.hashed {
                break;
            }
            let Some((offset, data)) = self.stash.pop_first() else {
                break;
            };
            self.stash_bytes -= data.len() as u64;
            let end = offset + data.len() as u64;
            if end > self.hashed {
                let skip = (self.hashed - offset) as usize;
                self.hasher.update(&data[skip..]);
                self.hashed = end;
            }
        }
    }

    fn cover(&mut self, start: u64, end: u64) {
        self.covered.push((start, end));
        self.covered.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.covered.len());
        for &(s, e) in &self.covered {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.covered = merged;
    }

    fn conclude(&mut self) {
        let digest = hex::encode(&std::mem::take(&mut self.hasher).finalize());
        self.stash.clear();
        self.stash_bytes = 0;
        self.verdict = Some(match &self.expected {
            Some(expected) if *expected != digest => {
                Err("sha256 mismatch: the received file differs from the offered one".to_owned())
            }
            _ => Ok(()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn digest(bytes: &[u8]) -> String {
        hex::encode(&Sha256::digest(bytes))
    }

    #[test]
    fn in_order_and_out_of_order_reads_are_checked() {
        let file = data(10_000);
        let mut v = Verifier::new(10_000, Some(&digest(&file)));
        for (from, to) in [(4000, 6000), (0, 4000), (8000, 10_000), (6000, 8000)] {
            v.absorb(
                from,
                &Bytes::copy_from_slice(&file[from as usize..to as usize]),
            );
        }
        assert_eq!(v.verdict(), Some(&Ok(())));
    }

    #[test]
    fn a_mismatch_is_reported() {
        let file = data(1000);
        let mut v = Verifier::new(1000, Some(&digest(b"something else")));
        v.absorb(0, &Bytes::copy_from_slice(&file));
        assert!(matches!(v.verdict(), Some(Err(_))));
    }

    #[test]
    fn pieces_dropped_from_the_stash_are_asked_for_again() {
        let size = (STASH_LIMIT * 2) as usize;
        let file = data(size);
        let mut v = Verifier::new(size as u64, Some(&digest(&file)));
        let half = size / 2;
        // Everything but the first byte, far more than the stash keeps.
        for start in (1..size).step_by(half) {
            let end = (start + half).min(size);
            v.absorb(start as u64, &Bytes::copy_from_slice(&file[start..end]));
        }
        assert_eq!(v.gap(), None, "nothing to re-read while byte 0 is missing");
        v.absorb(0, &Bytes::copy_from_slice(&file[..1]));
        while let Some((from, to)) = v.gap() {
            v.absorb(
                from,
                &Bytes::copy_from_slice(&file[from as usize..to as usize]),
            );
        }
        assert_eq!(v.verdict(), Some(&Ok(())));
    }

    #[test]
    fn partial_reads_give_no_verdict() {
        let mut v = Verifier::new(100, Some("00"));
        v.absorb(0, &Bytes::from_static(&[0; 50]));
        assert_eq!(v.verdict(), None);
    }
}
