//! ONNX external data: tensors whose bytes live in side files beside the
//! model (`torch.onnx.export` writes `m.onnx.data` by default), read through
//! read-only memory maps.
//!
//! A tensor says where its bytes are with the `external_data` entries
//! `location` (a path relative to the model's folder), `offset` and `length`
//! (bytes; absent = 0 and "to the end of the file"). kiln refuses a location
//! that is absolute, climbs out with `..`, or resolves outside the folder
//! through a link, and a range past the file's end; each error names the
//! tensor. Every file is mapped once per import and the constants copy what
//! they need out of it, so no mapping outlives the import.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use super::proto::TensorProto;

/// One mapped side file (`None` for an empty file, which cannot be mapped).
type Mapped = Rc<Option<memmap2::Mmap>>;

/// Resolves external-data references of the tensors of one model file.
pub(crate) struct ExternalData {
    /// the folder of the model file: every location is relative to it
    dir: PathBuf,
    /// mapped side files by location, each mapped at most once
    maps: RefCell<HashMap<String, Mapped>>,
}

/// The bytes of one external tensor: a mapping and the range within it.
pub(crate) struct Region {
    map: Mapped,
    range: Range<usize>,
}

impl Region {
    pub(crate) fn bytes(&self) -> &[u8] {
        match &*self.map {
            Some(m) => &m[self.range.clone()],
            None => &[],
        }
    }
}

/// Whether a tensor proto keeps its bytes outside the model file.
pub(crate) fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(1) || !t.external_data.is_empty()
}

impl ExternalData {
    /// References are resolved against the folder of `model_path`.
    pub(crate) fn beside(model_path: &Path) -> ExternalData {
        let dir = match model_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        ExternalData {
            dir,
            maps: RefCell::new(HashMap::new()),
        }
    }

    /// The bytes `t` refers to. Errors are messages about `t` (the caller
    /// prefixes the tensor's name).
    pub(crate) fn region(&self, t: &TensorProto) -> Result<Region, String> {
        let mut location = None;
        let mut offset = None;
        let mut length = None;
        for e in &t.external_data {
            let key = e.key.as_deref().unwrap_or("");
            let value = e.value.as_deref().unwrap_or("");
            let num = || {
                value.parse::<u64>().map_err(|_| {
                    format!(
                        "external data {key} '{}' is not a byte count",
                        value.escape_debug()
                    )
                })
            };
            match key {
                "location" => location = Some(value),
                "offset" => offset = Some(num()?),
                "length" => length = Some(num()?),
                // `checksum` and future keys do not change where the bytes are.
                _ => {}
            }
        }
        let location = location
            .filter(|l| !l.is_empty())
            .ok_or("stored as external data but names no location")?;
        let map = self.map(location)?;
        let file_len = (*map).as_ref().map_or(0, |m| m.len()) as u64;
        let offset = offset.unwrap_or(0);
        let shown = location.escape_debug();
        if offset > file_len {
            return Err(format!(
                "external data offset {offset} is past the end of '{shown}' ({file_len} bytes)"
            ));
        }
        let length = length.unwrap_or(file_len - offset);
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= file_len)
            .ok_or_else(|| {
                format!(
                    "external data offset {offset} + length {length} is past the end of '{shown}' ({file_len} bytes)"
                )
            })?;
        // Both fit in the file's length, which fits in the address space
        // because the file is mapped.
        let range = offset as usize..end as usize;
        Ok(Region { map, range })
    }

    /// The mapping of `location`, after checking that it stays in the folder.
    fn map(&self, location: &str) -> Result<Mapped, String> {
        if let Some(m) = self.maps.borrow().get(location) {
            return Ok(m.clone());
        }
        let shown = location.escape_debug();
        let rel = Path::new(location);
        let inside = rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside {
            return Err(format!(
                "external data location '{shown}' leaves the model's folder (it must be a relative path without '..')"
            ));
        }
        let path = self.dir.join(rel);
        let missing = |e: std::io::Error| {
            format!(
                "external data file '{}' cannot be opened: {e}",
                path.display().to_string().escape_debug()
            )
        };
        let real = path.canonicalize().map_err(missing)?;
        let dir = self.dir.canonicalize().map_err(missing)?;
        if !real.starts_with(&dir) {
            return Err(format!(
                "external data location '{shown}' resolves outside the model's folder (through a link)"
            ));
        }
        let file = File::open(&real).map_err(missing)?;
        let meta = file.metadata().map_err(missing)?;
        if !meta.is_file() {
            return Err(format!(
                "external data location '{shown}' is not a regular file"
            ));
        }
        let mapped = if meta.len() == 0 {
            None
        } else {
            Some(map_read_only(&file).map_err(missing)?)
        };
        let mapped = Rc::new(mapped);
        self.maps
            .borrow_mut()
            .insert(location.to_string(), mapped.clone());
        Ok(mapped)
    }
}

/// Maps `file` read-only.
#[allow(unsafe_code)]
fn map_read_only(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and private to this import: kiln never
    // writes the file, and every byte read from it is copied into an owned
    // constant before the import returns and drops the map. What no reader
    // of a mapped file can rule out is another process truncating or
    // rewriting the file during those milliseconds (a truncation would
    // fault); that is the same contract as any mmap-based model loader.
    unsafe { memmap2::Mmap::map(file) }
}
