//! The runtime side of a compiled model: memory it owns (constants, arenas)
//! and the worker pool that runs kernels.

pub(crate) mod pool;

/// One cache line of 32-bit words (f32 bit patterns or halves of i64s):
/// backing store of 64-byte aligned constant data.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct FLine([u32; 16]);

/// One cache line of words; backing store of arenas.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct WLine([u64; 8]);

/// The model's constant blob: weights, packed weights and tables, each at a
/// 64-byte aligned offset. Kernels address constants by offset
/// ([`crate::codegen::Loc::Const`]); the JIT bakes in the blob's address once
/// it is complete, an object file places it in read-only data.
#[derive(Default)]
pub(crate) struct ConstStore {
    lines: Vec<FLine>,
    /// first line of every range added, in order
    starts: Vec<usize>,
    /// bounds `bytes()` (the `consts` limit); code that builds a large
    /// table asks [`ConstStore::room`] before it allocates one
    limits: kiln_ir::Limits,
}

/// Where the ranges [`ConstStore::retain_read`] kept went: sorted
/// `(old start, old end, new start)` byte offsets.
#[derive(Default, Debug)]
pub(crate) struct ConstMap(Vec<(usize, usize, usize)>);

impl ConstMap {
    /// The new offset of old byte offset `off`.
    ///
    /// # Panics
    /// When `off` lies in a range that was dropped: the dry run that chose
    /// the ranges saw every offset the kernels use (emission is
    /// deterministic), so that is a broken invariant.
    pub fn map(&self, off: usize) -> usize {
        let i = self.0.partition_point(|&(start, _, _)| start <= off);
        match i.checked_sub(1).map(|i| self.0[i]) {
            Some((start, end, new)) if off < end => new + (off - start),
            _ => {
                panic!("constant offset {off} was not read in the dry run that compacted the blob")
            }
        }
    }
}

impl ConstStore {
    /// Appends `data` (64-byte aligned) and returns its byte offset.
    pub fn add(&mut self, data: &[f32]) -> usize {
        self.add_words(data.iter().map(|x| x.to_bits()), data.len())
    }

    fn add_words(&mut self, words: impl Iterator<Item = u32>, len: usize) -> usize {
        let off = self.lines.len() * 64;
        let start = self.lines.len();
        self.starts.push(start);
        self.lines
            .resize(start + len.div_ceil(16).max(1), FLine([0; 16]));
        for (i, w) in words.enumerate() {
            self.lines[start + i / 16].0[i % 16] = w;
        }
        off
    }

    /// Stores `i64` values (index tables) bit-for-bit; returns the offset.
    pub fn add_i64(&mut self, data: &[i64]) -> usize {
        // Little-endian halves, as the kernels load them (every kiln target
        // is little-endian).
        let words = data
            .iter()
            .flat_map(|&x| [x as u64 as u32, ((x as u64) >> 32) as u32]);
        self.add_words(words, 2 * data.len())
    }

    /// A store holding only the ranges that contain one of the byte offsets
    /// in `read` (in their original order, each still 64-byte aligned), and
    /// where each kept range went. Weights are added before lowering, in
    /// case a kernel reads them as they are; this drops those that every
    /// reader packed instead.
    pub fn retain_read(&self, read: &[usize]) -> (ConstStore, ConstMap) {
        let mut read = read.to_vec();
        read.sort_unstable();
        let mut out = ConstStore::with_limits(self.limits);
        let mut map = Vec::new();
        for (i, &start) in self.starts.iter().enumerate() {
            let end = self.starts.get(i + 1).copied().unwrap_or(self.lines.len());
            let (lo, hi) = (start * 64, end * 64);
            let k = read.partition_point(|&o| o < lo);
            if read.get(k).is_some_and(|&o| o < hi) {
                map.push((lo, hi, out.lines.len() * 64));
                out.starts.push(out.lines.len());
                out.lines.extend_from_slice(&self.lines[start..end]);
            }
        }
        (out, ConstMap(map))
    }

    /// An empty store bounded by `limits.const_bytes`.
    pub fn with_limits(limits: kiln_ir::Limits) -> ConstStore {
        ConstStore {
            limits,
            ..ConstStore::default()
        }
    }

    /// `Ok` when `bytes` more (named `what` in the error) fit under the
    /// `consts` limit: asked before building a table whose size comes from
    /// the model, so that a hostile shape is an error, not an abort.
    pub fn room(&self, bytes: usize, what: &str) -> Result<(), kiln_ir::IrError> {
        let mut used = self.bytes();
        self.limits.charge(&mut used, bytes, "consts", &what)
    }

    /// Total bytes held.
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64
    }

    /// The blob's address. Stable once no more data is added (the JIT
    /// takes it after lowering, when the blob is complete).
    pub fn base(&self) -> usize {
        self.lines.as_ptr() as usize
    }

    /// The blob's bytes (little-endian words), for an object file.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.lines
            .iter()
            .flat_map(|l| l.0.iter().flat_map(|w| w.to_le_bytes()))
            .collect()
    }
}

/// A per-call arena: 64-byte aligned.
///
/// No kernel reads arena bytes it has not written in the same call (an
/// object's scratch is not zeroed either; docs/aot.md). Builds with debug
/// assertions — every test — fill new arenas with all-ones bits (NaN as
/// f32) so that a kernel breaking this shows up as a mismatch.
pub(crate) struct Arena {
    lines: Box<[WLine]>,
}

impl Arena {
    /// An arena of at least `bytes` bytes.
    pub fn new(bytes: usize) -> Arena {
        let fill = if cfg!(debug_assertions) { u64::MAX } else { 0 };
        Arena {
            lines: vec![WLine([fill; 8]); bytes.div_ceil(64).max(1)].into_boxed_slice(),
        }
    }

    /// Writes pointer `p` into header slot `slot` (byte offset / 8).
    pub fn set_slot(&mut self, slot: usize, p: usize) {
        self.lines[slot / 8].0[slot % 8] = p as u64;
    }

    /// The pointer in header slot `slot`.
    pub fn slot(&self, slot: usize) -> usize {
        self.lines[slot / 8].0[slot % 8] as usize
    }

    /// The base address handed to kernels.
    pub fn base(&mut self) -> *mut u8 {
        self.lines.as_mut_ptr().cast()
    }
}
