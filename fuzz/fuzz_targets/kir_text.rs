//! `.kir` text: `parse` never panics, whatever the bytes; what it accepts is
//! a verified graph whose printed text parses again to an equal graph that
//! prints the same (docs/ir-text.md, "Guarantees").

#![no_main]

use kiln_ir::text::{parse, print, structural_diff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The parser takes `&str`; a file that is not UTF-8 is rejected by the
    // CLI before it reaches the parser (`read_to_string`).
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(g) = parse(src) else {
        return;
    };
    if let Err(e) = kiln_ir::verify(&g) {
        panic!("parse accepted a graph the verifier rejects: {e}");
    }
    let text = print(&g);
    let again =
        parse(&text).unwrap_or_else(|e| panic!("the printed text does not parse: {e}\n{text}"));
    if let Some(d) = structural_diff(&g, &again) {
        panic!("print then parse changed the graph: {d}\n{text}");
    }
    assert_eq!(print(&again), text, "the printed text is not a fixed point");
});
