//! Resource limits: how large a model kiln agrees to load, fold, optimise
//! and compile. Every stage that may allocate in proportion to what a model
//! file *says* (rather than to its size on disk) checks one of these before
//! it allocates, so a hostile or mistaken file is a clear `error:` line,
//! never an abort or an exhausted machine.

use std::fmt;

use crate::error::IrError;
use crate::graph::{Graph, Value};

/// The largest byte size any tensor type may have, whatever the limits:
/// `isize::MAX`, the bound of Rust allocations and pointer offsets. Types
/// above it cannot enter a graph (see [`crate::TensorType::check_size`]).
pub const MAX_TYPE_BYTES: usize = isize::MAX as usize;

/// One set of resource limits, shared by every stage. The defaults admit
/// every model of the field at batch 64 and refuse what would take a
/// sizeable part of a 16-32 GiB machine. Set from the CLI with `--limit
/// KEY=VALUE` ([`Limits::set`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Any one value of the graph (input, weight, intermediate, output), bytes.
    pub tensor_bytes: usize,
    /// All weights together, as loaded, bytes.
    pub weight_bytes: usize,
    /// All constants created by constant folding (at import, in the
    /// optimiser and in the backend), together, bytes.
    pub folded_bytes: usize,
    /// The activation arena of a compiled model, bytes.
    pub arena_bytes: usize,
    /// The compiled model's constant blob (weights, packed weights and
    /// index tables), bytes.
    pub const_bytes: usize,
    /// Nodes in a graph.
    pub nodes: usize,
    /// Extraction's work budget in bitset words (e-classes × the words of
    /// one class set): above it, extraction falls back to a linear-time
    /// greedy choice and the report says so.
    pub extract_work: usize,
}

const GIB: usize = 1 << 30;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tensor_bytes: 4 * GIB,
            weight_bytes: 8 * GIB,
            folded_bytes: 4 * GIB,
            arena_bytes: 8 * GIB,
            const_bytes: 16 * GIB,
            nodes: 1_000_000,
            // at most about 800 MB of bitsets and seconds of work; the
            // largest zoo model needs under a tenth of it
            extract_work: 100_000_000,
        }
    }
}

/// The keys [`Limits::set`] takes, with what each bounds.
pub const LIMIT_KEYS: &[(&str, &str)] = &[
    ("tensor", "bytes of any one value"),
    ("weights", "bytes of all weights"),
    ("folded", "bytes of all folded constants"),
    ("arena", "bytes of the activation arena"),
    ("consts", "bytes of the compiled constant blob"),
    ("nodes", "nodes in a graph"),
    (
        "extract",
        "extraction work (bitset words) before the greedy fallback",
    ),
];

impl Limits {
    /// Limits that admit everything a type may describe (tests of the
    /// limits themselves start from here).
    pub fn unlimited() -> Limits {
        Limits {
            tensor_bytes: MAX_TYPE_BYTES,
            weight_bytes: MAX_TYPE_BYTES,
            folded_bytes: MAX_TYPE_BYTES,
            arena_bytes: MAX_TYPE_BYTES,
            const_bytes: MAX_TYPE_BYTES,
            nodes: usize::MAX,
            extract_work: usize::MAX,
        }
    }

    /// Sets one limit from `KEY=VALUE` text, as the CLI's `--limit` gives
    /// it: sizes take an optional `K`, `M`, `G` or `T` suffix (binary, with
    /// or without `iB`), counts a plain number.
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (key, value) = spec
            .split_once('=')
            .ok_or_else(|| format!("limit `{spec}`: expected KEY=VALUE ({})", keys()))?;
        let n = parse_size(value.trim())
            .ok_or_else(|| format!("limit `{spec}`: `{value}` is not a size (e.g. 512M, 8G)"))?;
        let k = key.trim();
        let slot = self
            .slot(k)
            .ok_or_else(|| format!("limit `{spec}`: unknown key `{k}` ({})", keys()))?;
        *slot = n;
        Ok(())
    }

    /// Checks a graph against the limits: its node count, the size of every
    /// value, and the total size of its declared weights.
    pub fn check_graph(&self, g: &Graph) -> Result<(), IrError> {
        if g.node_count() > self.nodes {
            return Err(exceeded(
                &format!("the graph has {} nodes", g.node_count()),
                self.nodes,
                "nodes",
            ));
        }
        for id in g.node_ids() {
            for (output, info) in g.node(id).outputs.iter().enumerate() {
                let bytes = info.ty.check_size().map_err(|msg| IrError::Node {
                    node: g.display_value(Value { node: id, output }),
                    msg,
                })?;
                if bytes > self.tensor_bytes {
                    return Err(exceeded(
                        &format!(
                            "{} is {} ({})",
                            g.display_value(Value { node: id, output }),
                            info.ty,
                            Bytes(bytes)
                        ),
                        self.tensor_bytes,
                        "tensor",
                    ));
                }
            }
        }
        let mut total = 0usize;
        for &id in g.weights() {
            total = total.saturating_add(g.node(id).outputs[0].ty.size_bytes());
        }
        if total > self.weight_bytes {
            return Err(exceeded(
                &format!("the weights take {}", Bytes(total)),
                self.weight_bytes,
                "weights",
            ));
        }
        Ok(())
    }

    /// Adds `bytes` to a running total `used` of what `key` bounds, or says
    /// which limit it would exceed. `what` names the allocation.
    pub fn charge(
        &self,
        used: &mut usize,
        bytes: usize,
        key: &str,
        what: &dyn fmt::Display,
    ) -> Result<(), IrError> {
        let limit = self.get(key);
        match used.checked_add(bytes) {
            Some(t) if t <= limit => {
                *used = t;
                Ok(())
            }
            _ => Err(exceeded(
                &format!(
                    "{what} would bring it to {}",
                    Bytes(used.saturating_add(bytes))
                ),
                limit,
                key,
            )),
        }
    }

    /// The value of limit `key` (one of [`LIMIT_KEYS`]); panics on an
    /// unknown key, which is a bug in the caller, not in its input.
    pub fn get(&self, key: &str) -> usize {
        let mut copy = *self;
        *copy
            .slot(key)
            .unwrap_or_else(|| panic!("no limit named {key}"))
    }

    /// The field a key names: the one place keys map to fields.
    fn slot(&mut self, key: &str) -> Option<&mut usize> {
        Some(match key {
            "tensor" => &mut self.tensor_bytes,
            "weights" => &mut self.weight_bytes,
            "folded" => &mut self.folded_bytes,
            "arena" => &mut self.arena_bytes,
            "consts" => &mut self.const_bytes,
            "nodes" => &mut self.nodes,
            "extract" => &mut self.extract_work,
            _ => return None,
        })
    }
}

/// The error for a limit exceeded: what happened, the limit, and the flag
/// that raises it.
pub fn exceeded(what: &str, limit: usize, key: &str) -> IrError {
    let shown = if key == "nodes" || key == "extract" {
        limit.to_string()
    } else {
        Bytes(limit).to_string()
    };
    IrError::Limit(format!(
        "{what}: over the {key} limit of {shown} (raise it with --limit {key}=VALUE)"
    ))
}

fn keys() -> String {
    LIMIT_KEYS
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `123`, `512K`, `8M`, `4G`, `1T` (also `4GiB`, `4gb`): binary units.
fn parse_size(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    let t = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 10),
        'm' => (&t[..t.len() - 1], 20),
        'g' => (&t[..t.len() - 1], 30),
        't' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: usize = digits.trim().parse().ok()?;
    n.checked_mul(1usize.checked_shl(shift)?)
}

/// A byte count printed for people: `14.4 GB (15461882265 bytes)`.
#[derive(Clone, Copy, Debug)]
pub struct Bytes(pub usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        let (v, unit) = if b >= GIB as f64 {
            (b / GIB as f64, "GiB")
        } else if b >= (1 << 20) as f64 {
            (b / (1 << 20) as f64, "MiB")
        } else if b >= 1024.0 {
            (b / 1024.0, "KiB")
        } else {
            return write!(f, "{} bytes", self.0);
        };
        write!(f, "{v:.1} {unit} ({} bytes)", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("8m"), Some(8 << 20));
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("1tb"), Some(1 << 40));
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999999999999T"), None);
    }

    #[test]
    fn set_names_the_key_and_the_value() {
        let mut l = Limits::default();
        l.set("arena=1G").unwrap();
        assert_eq!(l.arena_bytes, 1 << 30);
        l.set("nodes=10").unwrap();
        assert_eq!(l.nodes, 10);
        assert!(l.set("arena").unwrap_err().contains("expected KEY=VALUE"));
        assert!(
            l.set("bogus=1")
                .unwrap_err()
                .contains("unknown key `bogus`")
        );
        assert!(l.set("arena=lots").unwrap_err().contains("not a size"));
    }

    #[test]
    fn every_listed_key_names_a_limit() {
        let mut l = Limits::default();
        for (k, _) in LIMIT_KEYS {
            assert!(l.slot(k).is_some(), "{k}");
        }
    }

    #[test]
    fn charge_accumulates_then_refuses() {
        let l = Limits {
            folded_bytes: 100,
            ..Limits::default()
        };
        let mut used = 0;
        l.charge(&mut used, 60, "folded", &"a").unwrap();
        let e = l.charge(&mut used, 60, "folded", &"b").unwrap_err();
        assert_eq!(used, 60);
        assert!(
            e.to_string().contains("over the folded limit of 100 bytes"),
            "{e}"
        );
        assert!(e.to_string().contains("--limit folded="), "{e}");
    }
}
