//! Common-subexpression elimination: two nodes with the same op and the
//! same operands compute the same value; the later one is replaced by the
//! earlier (so names of the first occurrence survive).

use std::collections::HashMap;

use kiln_ir::{Graph, IrError, Op, Value};

/// Merges duplicate computations; returns how many nodes were removed.
pub fn cse(g: &mut Graph) -> Result<usize, IrError> {
    let mut seen: HashMap<(Op, Vec<Value>), kiln_ir::NodeId> = HashMap::new();
    let mut removed = 0;
    for id in g.topo_order()? {
        let op = g.node(id).op.clone();
        if op.is_leaf() {
            continue;
        }
        let key = (op, g.operands(id));
        match seen.get(&key) {
            Some(&first) => {
                for o in 0..g.node(id).outputs.len() {
                    g.replace_all_uses(
                        Value {
                            node: id,
                            output: o,
                        },
                        Value {
                            node: first,
                            output: o,
                        },
                    );
                }
                g.remove_node(id);
                removed += 1;
            }
            None => {
                seen.insert(key, id);
            }
        }
    }
    Ok(removed)
}
