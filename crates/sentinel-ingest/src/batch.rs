//! Packing encoded records into gzip request bodies that the API accepts.
//!
//! The gateway refuses bodies over 1 MiB (`ContentLengthLimitExceeded`) and a decompressed
//! payload over ~50 MiB (`PayloadSizeLimitExceeded`). The default mode packs at most 1,000,000
//! bytes of JSON before gzip, as Microsoft's SDKs do, so no body can ever exceed the limit
//! whatever the compression ratio. [`BatchLimit::Compressed`] packs more per request and verifies
//! each body after compression (an oversize body is split before it is ever sent).

use std::ops::Range;

use bytes::Bytes;
use libdeflater::{CompressionLvl, Compressor};

use crate::error::IngestError;

/// Uncompressed JSON bytes per request in the default mode (.NET `SingleUploadThreshold`).
pub const DEFAULT_MAX_UNCOMPRESSED_BYTES: usize = 1_000_000;
/// Compressed ceiling in [`BatchLimit::Compressed`]: 1 MiB minus 4 KiB headroom (otel-arrow).
pub const DEFAULT_MAX_COMPRESSED_BYTES: usize = 1024 * 1024 - 4096;
/// Decompressed ceiling in [`BatchLimit::Compressed`] (otel-arrow PR #2535).
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 50 * 1024 * 1024;
/// The gateway's hard limit on a request body.
pub const API_MAX_BODY_BYTES: usize = 1024 * 1024;

/// How request bodies are sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchLimit {
    /// At most `max_bytes` of JSON array before gzip (documented-safe; the default).
    Uncompressed {
        /// Bytes of the JSON array, brackets and commas included.
        max_bytes: usize,
    },
    /// At most `max_compressed_bytes` on the wire and `max_decompressed_bytes` of JSON.
    Compressed {
        /// Gzip body ceiling.
        max_compressed_bytes: usize,
        /// JSON array ceiling.
        max_decompressed_bytes: usize,
    },
}

impl Default for BatchLimit {
    fn default() -> Self {
        Self::Uncompressed {
            max_bytes: DEFAULT_MAX_UNCOMPRESSED_BYTES,
        }
    }
}

impl BatchLimit {
    /// The documented compressed mode with its default ceilings.
    pub const fn compressed() -> Self {
        Self::Compressed {
            max_compressed_bytes: DEFAULT_MAX_COMPRESSED_BYTES,
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
        }
    }

    fn max_json_bytes(self) -> usize {
        match self {
            Self::Uncompressed { max_bytes } => max_bytes,
            Self::Compressed {
                max_decompressed_bytes,
                ..
            } => max_decompressed_bytes,
        }
    }

    pub(crate) fn validate(self) -> Result<(), IngestError> {
        let ok = match self {
            Self::Uncompressed { max_bytes } => (1024..=API_MAX_BODY_BYTES).contains(&max_bytes),
            Self::Compressed {
                max_compressed_bytes,
                max_decompressed_bytes,
            } => {
                (1024..=API_MAX_BODY_BYTES).contains(&max_compressed_bytes)
                    && max_decompressed_bytes >= max_compressed_bytes
            }
        };
        if ok {
            Ok(())
        } else {
            Err(IngestError::Config(format!(
                "batch limit {self:?} out of range (1 KiB..=1 MiB on the wire)"
            )))
        }
    }
}

/// Result of [`Batcher::plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Contiguous runs of record indices, each one request body.
    pub batches: Vec<Range<usize>>,
    /// Indices of records that can never fit a request on their own.
    pub too_large: Vec<usize>,
}

/// A gzip request body.
#[derive(Debug, Clone)]
pub struct Body {
    /// Gzip bytes, the request body.
    pub gzip: Bytes,
    /// Length of the JSON array before compression.
    pub uncompressed_len: usize,
}

/// Why [`Batcher::build`] refused to produce a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The records do not fit one request; split them and build again.
    #[error("batch exceeds the request limit")]
    TooLarge,
}

/// Packs records into gzip bodies within a [`BatchLimit`]. One per delivery; not shared.
pub struct Batcher {
    limit: BatchLimit,
    compressor: Compressor,
    json: Vec<u8>,
    /// Conservative uncompressed/compressed ratio, used to plan compressed-mode batches.
    ratio_estimate: f64,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// Starting guess for the compressed mode; Falcon JSON compresses ~6x at level 1, so 3x
/// leaves room and a batch that still overflows is split before sending.
const INITIAL_RATIO_ESTIMATE: f64 = 3.0;

impl Batcher {
    /// A batcher for `limit`, compressing at libdeflate `gzip_level` (1..=12).
    pub fn new(limit: BatchLimit, gzip_level: u8) -> Result<Self, IngestError> {
        limit.validate()?;
        // Level 0 (stored) would only inflate bodies; libdeflate's ceiling is 12.
        let level = (1..=12)
            .contains(&gzip_level)
            .then(|| CompressionLvl::new(i32::from(gzip_level)).ok())
            .flatten()
            .ok_or_else(|| {
                IngestError::Config(format!("gzip level {gzip_level} outside 1..=12"))
            })?;
        Ok(Self {
            limit,
            compressor: Compressor::new(level),
            json: Vec::new(),
            ratio_estimate: INITIAL_RATIO_ESTIMATE,
        })
    }

    /// The configured limit.
    pub fn limit(&self) -> BatchLimit {
        self.limit
    }

    /// The planning ratio (JSON bytes per gzip byte) learnt so far in compressed mode.
    pub fn ratio_estimate(&self) -> f64 {
        self.ratio_estimate
    }

    /// Starts from a ratio learnt earlier (e.g. by the previous delivery), clamped to 1..=20.
    #[must_use]
    pub fn with_ratio_estimate(mut self, ratio: f64) -> Self {
        if ratio.is_finite() {
            self.ratio_estimate = ratio.clamp(1.0, 20.0);
        }
        self
    }

    /// Greedily splits records (given by their JSON lengths, in order) into request-sized runs.
    /// A record that cannot fit even alone is listed in [`Plan::too_large`] and never sent.
    pub fn plan(&self, lengths: impl IntoIterator<Item = usize>) -> Plan {
        let budget = match self.limit {
            BatchLimit::Uncompressed { max_bytes } => max_bytes,
            BatchLimit::Compressed {
                max_compressed_bytes,
                max_decompressed_bytes,
            } => {
                // ratio_estimate >= 1.0, so the product is positive and finite.
                #[allow(clippy::cast_sign_loss)]
                let estimated = (max_compressed_bytes as f64 * self.ratio_estimate) as usize;
                estimated.clamp(max_compressed_bytes, max_decompressed_bytes)
            }
        };
        let hard = self.limit.max_json_bytes();
        let mut plan = Plan::default();
        let mut start = 0;
        let mut size = 0; // JSON array bytes of the open run, brackets included
        let mut index = 0;
        for len in lengths {
            let alone = len + 2;
            if alone > hard {
                if index > start {
                    plan.batches.push(start..index);
                }
                plan.too_large.push(index);
                start = index + 1;
                size = 0;
            } else if index > start && size + len + 1 > budget {
                plan.batches.push(start..index);
                start = index;
                size = alone;
            } else {
                size = if index > start { size + len + 1 } else { alone };
            }
            index += 1;
        }
        if index > start {
            plan.batches.push(start..index);
        }
        plan
    }

    /// Builds one gzip body of `records` as a JSON array.
    pub fn build(&mut self, records: &[Bytes]) -> Result<Body, BuildError> {
        let json_len =
            records.iter().map(Bytes::len).sum::<usize>() + records.len().saturating_sub(1) + 2;
        if json_len > self.limit.max_json_bytes() {
            return Err(BuildError::TooLarge);
        }
        self.json.clear();
        self.json.reserve(json_len);
        self.json.push(b'[');
        for (i, record) in records.iter().enumerate() {
            if i > 0 {
                self.json.push(b',');
            }
            self.json.extend_from_slice(record);
        }
        self.json.push(b']');
        let gzip = self.gzip_json();
        if let BatchLimit::Compressed {
            max_compressed_bytes,
            ..
        } = self.limit
        {
            let ratio = self.json.len() as f64 / gzip.len().max(1) as f64;
            // Plan with 80 % of what we observe, moving slowly so one odd batch does not swing it.
            self.ratio_estimate = (self.ratio_estimate * 0.8 + ratio * 0.8 * 0.2).max(1.0);
            if gzip.len() > max_compressed_bytes {
                return Err(BuildError::TooLarge);
            }
        }
        Ok(Body {
            gzip: Bytes::from(gzip),
            uncompressed_len: self.json.len(),
        })
    }

    /// Gzips arbitrary bytes with this batcher's level (used by the benchmark as the baseline).
    pub fn gzip(&mut self, data: &[u8]) -> Vec<u8> {
        let bound = self.compressor.gzip_compress_bound(data.len());
        let mut out = vec![0u8; bound];
        // The bound is libdeflate's own worst case, so InsufficientSpace cannot happen.
        let n = self.compressor.gzip_compress(data, &mut out).unwrap_or(0);
        debug_assert!(n > 0 || data.is_empty());
        out.truncate(n);
        out
    }

    fn gzip_json(&mut self) -> Vec<u8> {
        let json = std::mem::take(&mut self.json);
        let out = self.gzip(&json);
        self.json = json;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn plan_respects_uncompressed_limit_and_isolates_oversize() {
        let b = Batcher::new(BatchLimit::Uncompressed { max_bytes: 1024 }, 1).unwrap();
        let lengths = [400, 400, 400, 2000, 100, 1022, 1023, 10];
        let plan = b.plan(lengths);
        assert_eq!(plan.too_large, vec![3, 6]);
        assert_eq!(plan.batches, vec![0..2, 2..3, 4..5, 5..6, 7..8]);
        for r in &plan.batches {
            let size: usize = lengths[r.clone()].iter().sum::<usize>() + r.len() - 1 + 2;
            assert!(size <= 1024, "{r:?} {size}");
        }
    }

    #[test]
    fn plan_exact_fit() {
        let b = Batcher::new(BatchLimit::Uncompressed { max_bytes: 1024 }, 1).unwrap();
        // 2 brackets + 511 + 1 comma + 510 = 1024
        assert_eq!(b.plan([511, 510, 1]).batches, vec![0..2, 2..3]);
    }

    #[test]
    fn build_produces_gzip_json_array() {
        let mut b = Batcher::new(BatchLimit::default(), 1).unwrap();
        let recs = vec![
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"{\"b\":2}"),
        ];
        let body = b.build(&recs).unwrap();
        assert_eq!(gunzip(&body.gzip), b"[{\"a\":1},{\"b\":2}]");
        assert_eq!(body.uncompressed_len, 17);
    }

    #[test]
    fn compressed_mode_refuses_incompressible_overflow() {
        let limit = BatchLimit::Compressed {
            max_compressed_bytes: 2048,
            max_decompressed_bytes: 1 << 20,
        };
        let mut b = Batcher::new(limit, 1).unwrap();
        // Pseudo-random hex does not compress below ~50 %.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let rec: String = (0..8000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x & 15) as usize])
            })
            .collect();
        let rec = Bytes::from(format!("\"{rec}\""));
        assert!(matches!(
            b.build(std::slice::from_ref(&rec)),
            Err(BuildError::TooLarge)
        ));
        let small = Bytes::from_static(b"{}");
        assert!(b.build(&[small]).is_ok());
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(Batcher::new(BatchLimit::default(), 0).is_err());
        assert!(Batcher::new(BatchLimit::default(), 13).is_err());
        assert!(Batcher::new(BatchLimit::Uncompressed { max_bytes: 2 << 20 }, 1).is_err());
    }
}
