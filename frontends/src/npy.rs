//! `.npy` tensor files (NumPy format 1.0–3.0): read and write `f32` and `i64`,
//! little-endian, C order.
//!
//! The reader is hand-written on purpose. The format is a magic string, a
//! version, a length and a Python dict literal with three keys, followed by
//! raw data: about sixty lines of parsing. No well-kept crate for it is in
//! our dependency set, and the ones that exist pull in a generic
//! Python-literal parser or `ndarray`, where we need neither. Writing it
//! ourselves also lets every rejection say what is wrong and how to fix it
//! (`float64: convert with a.astype(np.float32)`).
//!
//! Format reference: `numpy/lib/format.py` (NEP 1). Layout:
//!
//! ```text
//! "\x93NUMPY" major minor  header_len (u16 LE for 1.x, u32 LE for 2.x/3.x)
//! "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" padded with
//! spaces and a final '\n' so that the data starts at a multiple of 64
//! raw elements, C order
//! ```
//!
//! Nothing here panics on any input: every length and count is checked
//! before it is used (see the proptests in `frontends/tests/io_npy.rs`).

use std::path::Path;

use kiln_ir::{DType, Tensor, TensorData};

use crate::FrontendError;

const MAGIC: &[u8] = b"\x93NUMPY";
/// numpy aligns the start of the data to 64 bytes (since numpy 1.14).
const ALIGN: usize = 64;

fn err(msg: impl Into<String>) -> FrontendError {
    FrontendError::Npy(msg.into())
}

/// Decodes a `.npy` byte buffer.
///
/// Accepts format versions 1.0, 2.0 and 3.0 with dtype `<f4` (→ `f32`) or
/// `<i8` (→ `i64`) in C order. Rejects, with a message saying what is wrong:
/// a bad magic string or version, a truncated header or data, a malformed
/// header dict, an unsupported dtype (naming the numpy conversion that fixes
/// it), Fortran order, an element count that overflows, and trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<Tensor, FrontendError> {
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        return Err(err(
            "not a .npy file (it does not start with the magic string \\x93NUMPY)",
        ));
    };
    let (major, minor) = match rest {
        [major, minor, ..] => (*major, *minor),
        _ => return Err(err("truncated header: the file ends inside the version")),
    };
    // Versions 1 and 2 differ only in the width of the header length;
    // version 3 declares the header UTF-8 instead of latin-1. The dict numpy
    // writes is pure ASCII either way, and the parser rejects anything else.
    let len_size = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => {
            return Err(err(format!(
                "unsupported format version {major}.{minor} (kiln reads 1.0, 2.0 and 3.0)"
            )));
        }
    };
    let prefix = MAGIC.len() + 2;
    let len_bytes = bytes
        .get(prefix..prefix + len_size)
        .ok_or_else(|| err("truncated header: the file ends inside the header length"))?;
    let header_len = len_bytes
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let header_start = prefix + len_size;
    let data_start = header_start
        .checked_add(header_len)
        .ok_or_else(|| err("header length overflows"))?;
    let header = bytes.get(header_start..data_start).ok_or_else(|| {
        err(format!(
            "truncated header: it declares {header_len} bytes, the file has {}",
            bytes.len() - header_start
        ))
    })?;
    let header = parse_header(header)?;

    let dtype = header.dtype;
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            err(format!(
                "shape {:?} has more elements than this machine can address",
                header.shape
            ))
        })?;
    let nbytes = count.checked_mul(dtype.size_bytes()).ok_or_else(|| {
        err(format!(
            "shape {:?} needs more bytes than this machine can address",
            header.shape
        ))
    })?;
    let data = &bytes[data_start..];
    if data.len() < nbytes {
        return Err(err(format!(
            "truncated data: shape {:?} of {} needs {nbytes} bytes, the file has {}",
            header.shape,
            dtype,
            data.len()
        )));
    }
    if data.len() > nbytes {
        return Err(err(format!(
            "{} unexpected bytes after the data of shape {:?}",
            data.len() - nbytes,
            header.shape
        )));
    }
    let tensor = match dtype {
        DType::F32 => {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::from_f32(header.shape, v)
        }
        DType::I64 => {
            let v: Vec<i64> = data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            Tensor::from_i64(header.shape, v)
        }
    };
    // The length was checked above, so this cannot fail; map it anyway
    // rather than unwrap, in keeping with "no panics on input".
    tensor.map_err(FrontendError::from)
}

/// Encodes a tensor as `.npy`: format 1.0 (2.0 if the header would not fit
/// a 16-bit length), little-endian, C order; `f32` as `<f4`, `i64` as `<i8`.
/// The output is what `numpy.save` writes for the same array.
pub fn encode(t: &Tensor) -> Result<Vec<u8>, FrontendError> {
    let descr = match t.dtype() {
        DType::F32 => "<f4",
        DType::I64 => "<i8",
    };
    let shape = match t.shape() {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let (version, len_size) = if dict.len() + 1 + MAGIC.len() + 4 <= usize::from(u16::MAX) {
        (1u8, 2)
    } else {
        (2u8, 4)
    };
    // Pad with spaces, then '\n', so that the data starts at a multiple of 64.
    let unpadded = MAGIC.len() + 2 + len_size + dict.len() + 1;
    let header_len = dict.len() + 1 + (ALIGN - unpadded % ALIGN) % ALIGN;
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + len_size + header_len + t.numel() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        let n = u16::try_from(header_len).map_err(|_| err("header too long"))?;
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        let n = u32::try_from(header_len).map_err(|_| err("header too long"))?;
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + header_len - dict.len() - 1, b' ');
    out.push(b'\n');
    match t.data() {
        TensorData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    Ok(out)
}

/// Reads a `.npy` file; errors name the file.
pub fn read(path: &Path) -> Result<Tensor, FrontendError> {
    let bytes = std::fs::read(path).map_err(|e| FrontendError::io(path, e))?;
    decode(&bytes).map_err(|e| match e {
        FrontendError::Npy(msg) => FrontendError::Npy(format!("{}: {msg}", path.display())),
        other => other,
    })
}

/// Writes a `.npy` file.
pub fn write(path: &Path, t: &Tensor) -> Result<(), FrontendError> {
    std::fs::write(path, encode(t)?).map_err(|e| FrontendError::io(path, e))
}

/// What the header dict says.
struct Header {
    dtype: DType,
    shape: Vec<usize>,
}

/// A value in the header dict: the subset of Python literals numpy writes.
#[derive(Debug)]
enum Lit {
    Str(String),
    Bool(bool),
    Ints(Vec<usize>),
}

/// Parses the header dict and checks its keys and values.
fn parse_header(raw: &[u8]) -> Result<Header, FrontendError> {
    let mut p = Parser { s: raw, pos: 0 };
    let entries = p.dict()?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (key, value) in entries {
        let slot = match key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran,
            "shape" => &mut shape,
            other => {
                return Err(err(format!(
                    "malformed header: unexpected key '{other}' (numpy writes only 'descr', 'fortran_order' and 'shape')"
                )));
            }
        };
        if slot.replace(value).is_some() {
            return Err(err(format!("malformed header: key '{key}' appears twice")));
        }
    }
    let missing = |k: &str| err(format!("malformed header: the key '{k}' is missing"));
    let descr = descr.ok_or_else(|| missing("descr"))?;
    let fortran = fortran.ok_or_else(|| missing("fortran_order"))?;
    let shape = shape.ok_or_else(|| missing("shape"))?;

    let dtype = match descr {
        Lit::Str(s) => dtype_of(&s)?,
        v => {
            return Err(err(format!(
                "malformed header: 'descr' must be a string, found {v:?}"
            )));
        }
    };
    match fortran {
        Lit::Bool(false) => {}
        Lit::Bool(true) => {
            return Err(err(
                "Fortran-order array: kiln reads C order; save np.ascontiguousarray(a) instead",
            ));
        }
        v => {
            return Err(err(format!(
                "malformed header: 'fortran_order' must be True or False, found {v:?}"
            )));
        }
    }
    let shape = match shape {
        Lit::Ints(v) => v,
        v => {
            return Err(err(format!(
                "malformed header: 'shape' must be a tuple of integers, found {v:?}"
            )));
        }
    };
    Ok(Header { dtype, shape })
}

/// Maps a numpy dtype string to ours, or says how to convert the array.
fn dtype_of(descr: &str) -> Result<DType, FrontendError> {
    match descr {
        "<f4" => return Ok(DType::F32),
        "<i8" => return Ok(DType::I64),
        _ => {}
    }
    let (order, code) = match descr.as_bytes().first() {
        Some(b'<' | b'>' | b'|' | b'=') => descr.split_at(1),
        _ => ("", descr),
    };
    let name = match code {
        "f2" => "float16",
        "f4" => "float32",
        "f8" => "float64",
        "f16" => "float128",
        "i1" => "int8",
        "i2" => "int16",
        "i4" => "int32",
        "i8" => "int64",
        "u1" => "uint8",
        "u2" => "uint16",
        "u4" => "uint32",
        "u8" => "uint64",
        "b1" => "bool",
        "c8" => "complex64",
        "c16" => "complex128",
        _ => {
            return Err(err(format!(
                "unsupported dtype '{descr}': kiln reads float32 ('<f4') and int64 ('<i8'); convert with a.astype(np.float32)"
            )));
        }
    };
    if order == ">" {
        let target = if name == "int64" { "'<i8'" } else { "'<f4'" };
        return Err(err(format!(
            "unsupported dtype: big-endian {name} ('{descr}'): convert with a.astype({target})"
        )));
    }
    let fix = match name {
        "float32" | "int64" => format!("a.astype('<{code}')"),
        n if n.starts_with("int") || n.starts_with("uint") => {
            "a.astype(np.float32) (or a.astype(np.int64) for index tensors)".to_string()
        }
        _ => "a.astype(np.float32)".to_string(),
    };
    Err(err(format!(
        "unsupported dtype: {name} ('{descr}'): convert with {fix}"
    )))
}

/// A recursive-descent parser for the header dict: `{ 'key': value, ... }`
/// where a value is a quoted string, `True`/`False`, or a tuple/list of
/// non-negative integers. Whitespace is allowed between tokens.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn fail(&self, what: &str) -> FrontendError {
        let found = match self.s.get(self.pos) {
            Some(&c) if c.is_ascii_graphic() || c == b' ' => format!("'{}'", char::from(c)),
            Some(&c) => format!("byte 0x{c:02x}"),
            None => "the end of the header".to_string(),
        };
        err(format!(
            "malformed header: expected {what} at byte {}, found {found}",
            self.pos
        ))
    }

    fn skip_ws(&mut self) {
        while self
            .s
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), FrontendError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.fail(&format!("'{}'", char::from(c))))
        }
    }

    fn dict(&mut self) -> Result<Vec<(String, Lit)>, FrontendError> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        loop {
            if self.eat(b'}') {
                break;
            }
            let key = self.string()?;
            self.expect(b':')?;
            let value = self.value()?;
            entries.push((key, value));
            if !self.eat(b',') {
                self.expect(b'}')?;
                break;
            }
        }
        // After the dict only padding may follow.
        if self.peek().is_some() {
            return Err(self.fail("only spaces and a newline after the dict"));
        }
        Ok(entries)
    }

    fn string(&mut self) -> Result<String, FrontendError> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(self.fail("a quoted string")),
        };
        let start = self.pos + 1;
        let len = self.s[start..]
            .iter()
            .position(|&c| c == quote)
            .ok_or_else(|| err("malformed header: a string is not closed"))?;
        let raw = &self.s[start..start + len];
        self.pos = start + len + 1;
        if !raw.iter().all(|c| c.is_ascii_graphic() || *c == b' ') || raw.contains(&b'\\') {
            return Err(err(
                "malformed header: a string holds characters numpy never writes there",
            ));
        }
        // Checked ASCII just above.
        Ok(raw.iter().map(|&c| char::from(c)).collect())
    }

    fn value(&mut self) -> Result<Lit, FrontendError> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Lit::Str(self.string()?)),
            Some(b'(') => self.ints(b')'),
            Some(b'[') => {
                // A list of ints is a shape some writers produce; a list of
                // tuples is a structured dtype, which we name, not parse.
                let save = self.pos;
                self.pos += 1;
                if self.peek() == Some(b'(') {
                    return Err(err(
                        "unsupported dtype: a structured array (a list of fields); kiln reads plain float32 or int64 arrays: save each field on its own, e.g. a['x'].astype(np.float32)",
                    ));
                }
                self.pos = save;
                self.ints(b']')
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self
                    .s
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    self.pos += 1;
                }
                match &self.s[start..self.pos] {
                    b"True" => Ok(Lit::Bool(true)),
                    b"False" => Ok(Lit::Bool(false)),
                    _ => {
                        self.pos = start;
                        Err(self.fail("a string, True, False or a tuple"))
                    }
                }
            }
            _ => Err(self.fail("a string, True, False or a tuple")),
        }
    }

    /// A tuple or list of non-negative integers; `open` was peeked.
    fn ints(&mut self, close: u8) -> Result<Lit, FrontendError> {
        self.pos += 1;
        let mut v = Vec::new();
        loop {
            if self.eat(close) {
                break;
            }
            v.push(self.int()?);
            if !self.eat(b',') {
                self.expect(close)?;
                break;
            }
        }
        Ok(Lit::Ints(v))
    }

    fn int(&mut self) -> Result<usize, FrontendError> {
        self.skip_ws();
        let start = self.pos;
        while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.fail("a non-negative integer"));
        }
        // Python 2 wrote long ints with an `L` suffix; old files still have it.
        let digits = &self.s[start..self.pos];
        if self.s.get(self.pos) == Some(&b'L') {
            self.pos += 1;
        }
        digits
            .iter()
            .try_fold(0usize, |acc, &d| {
                acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
            })
            .ok_or_else(|| {
                err(format!(
                    "shape dimension {} is too large",
                    String::from_utf8_lossy(digits)
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_64_byte_aligned_and_newline_terminated() {
        for shape in [vec![], vec![3], vec![1, 3, 224, 224]] {
            let n = shape.iter().product();
            let t = Tensor::from_f32(shape, vec![0.5; n]).unwrap();
            let bytes = encode(&t).unwrap();
            let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
            let data_start = 10 + header_len;
            assert_eq!(data_start % 64, 0);
            assert_eq!(bytes[data_start - 1], b'\n');
        }
    }

    #[test]
    fn parser_accepts_numpy_variants() {
        let h = parse_header(b"{\"descr\":\"<i8\",\"fortran_order\":False,\"shape\":[2L,3]}  \n")
            .unwrap();
        assert_eq!(h.dtype, DType::I64);
        assert_eq!(h.shape, vec![2, 3]);
    }
}
