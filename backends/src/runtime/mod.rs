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
}

impl ConstStore {
    /// Appends `data` (64-byte aligned) and returns its byte offset.
    pub fn add(&mut self, data: &[f32]) -> usize {
        self.add_words(data.iter().map(|x| x.to_bits()), data.len())
    }

    fn add_words(&mut self, words: impl Iterator<Item = u32>, len: usize) -> usize {
        let off = self.lines.len() * 64;
        let start = self.lines.len();
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

/// A per-call arena: 64-byte aligned, zero-initialised once.
pub(crate) struct Arena {
    lines: Box<[WLine]>,
}

impl Arena {
    /// An arena of at least `bytes` bytes.
    pub fn new(bytes: usize) -> Arena {
        Arena {
            lines: vec![WLine([0; 8]); bytes.div_ceil(64).max(1)].into_boxed_slice(),
        }
    }

    /// Writes pointer `p` into header slot `slot` (byte offset / 8).
    pub fn set_slot(&mut self, slot: usize, p: usize) {
        self.lines[slot / 8].0[slot % 8] = p as u64;
    }

    /// The base address handed to kernels.
    pub fn base(&mut self) -> *mut u8 {
        self.lines.as_mut_ptr().cast()
    }
}
