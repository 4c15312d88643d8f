//! Bad `.kir` input: each case asserts the exact line, column and message,
//! so a regression in where or how an error is reported fails a test.

use kiln_ir::IrError;
use kiln_ir::text::parse;

/// Parses `src`, which must fail at `line`:`col` with `msg`.
#[track_caller]
fn check(src: &str, line: usize, col: usize, msg: &str) {
    match parse(src) {
        Ok(g) => panic!("parsed, but should fail:\n{}", kiln_ir::text::print(&g)),
        Err(IrError::Parse {
            line: l,
            col: c,
            msg: m,
        }) => assert_eq!((l, c, m.as_str()), (line, col, msg), "for input:\n{src}"),
        Err(other) => panic!("not a located parse error: {other:?}"),
    }
}

/// A graph with input `%x : f32[2,3]` and the given body lines, each
/// indented by two spaces. The body starts on line 3.
fn graph(body: &[&str]) -> String {
    let mut s = String::from("graph t {\n  input %x : f32[2,3]\n");
    for l in body {
        s.push_str("  ");
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("}\n");
    s
}

#[test]
fn syntax_errors() {
    check(
        "",
        1,
        1,
        "expected `graph` at the start of the text, found the end of the text",
    );
    check(
        "grph t {",
        1,
        1,
        "expected `graph` at the start of the text, found `grph`",
    );
    check(
        "graph {",
        1,
        7,
        "expected the graph's name after `graph`, found `{`",
    );
    check(
        "graph 1e-5 {",
        1,
        7,
        "graph name `1e-5` must be quoted: bare names use only letters, digits, `_` and `.`",
    );
    check(
        "graph t (",
        1,
        9,
        "expected `{` after the graph's name, found `(`",
    );
    check(
        &graph(&["%0 = relu(%x) f32[2,3]", "output %0"]),
        3,
        17,
        "expected `:` and the result types after the operand list, found `f32`",
    );
    check(
        &graph(&["%0 = softmax(%x) {axis=1} {", "output %0"]),
        3,
        29,
        "expected `:` and the result types after the attributes, found `{`",
    );
    check(
        &graph(&["%0 relu(%x) : f32[2,3]", "output %0"]),
        3,
        6,
        "expected `,` or `=` after a result name, found `relu`",
    );
    check(
        &graph(&["%0, = relu(%x) : f32[2,3]", "output %0"]),
        3,
        7,
        "expected a result name `%name` after `,`, found `=`",
    );
    check(
        &graph(&["%0 = (%x) : f32[2,3]", "output %0"]),
        3,
        8,
        "expected an op name after `=`, found `(`",
    );
    check(
        &graph(&["%0 = relu %x : f32[2,3]", "output %0"]),
        3,
        13,
        "expected `(` after the op name `relu`, found `%x`",
    );
    check(
        &graph(&["%0 = add(%x %x) : f32[2,3]", "output %0"]),
        3,
        15,
        "expected `,` or `)` after an operand, found `%x`",
    );
    check(
        &graph(&["%0 = add(%x, 1) : f32[2,3]", "output %0"]),
        3,
        16,
        "expected an operand (`%value` or `@weight`), found `1`",
    );
    check(
        &graph(&["%0 = softmax(%x) {axis 1} : f32[2,3]", "output %0"]),
        3,
        26,
        "expected `=` after the attribute name `axis`, found `1`",
    );
    check(
        &graph(&["%0 = softmax(%x) {axis=1 dim=1} : f32[2,3]", "output %0"]),
        3,
        28,
        "expected `,` or `}` after an attribute, found `dim`",
    );
    check(
        &graph(&["%0 = softmax(%x) {axis=} : f32[2,3]", "output %0"]),
        3,
        26,
        "expected an attribute value (a number, `true`, `false`, a word or a `[...]` list), found `}`",
    );
    check(
        &graph(&["%0 = transpose(%x) {perm=[1 0]} : f32[3,2]", "output %0"]),
        3,
        31,
        "expected `,` or `]` in the list, found `0`",
    );
    check(
        &graph(&["%0 = transpose(%x) {perm=[1,0.5]} : f32[3,2]", "output %0"]),
        3,
        31,
        "expected an integer in the list, found `0.5`",
    );
    check(
        &graph(&["%0 = transpose(%x) {perm=[[1]]} : f32[3,2]", "output %0"]),
        3,
        29,
        "expected an integer in the list, found `[`",
    );
    check(
        &graph(&["%0 = relu(%x) : f32[2 3]", "output %0"]),
        3,
        25,
        "expected `,` or `]` in the shape, found `3`",
    );
    check(
        &graph(&["%0 = relu(%x) : f32[2,-3]", "output %0"]),
        3,
        25,
        "expected a dimension (a non-negative integer), found `-3`",
    );
    check(
        &graph(&["%0 = relu(%x) : [2,3]", "output %0"]),
        3,
        19,
        "expected a type such as `f32[1,3,224,224]`, found `[`",
    );
    check(
        "graph t {\n  input %x : f16[2]\n  output %x\n}\n",
        2,
        14,
        "unknown element type `f16` (expected f32 or i64)",
    );
    check(
        "graph t {\n  input x : f32[2]\n  output %x\n}\n",
        2,
        9,
        "expected an input name `%name` after `input`, found `x`",
    );
    check(
        "graph t {\n  weight %w : f32[2]\n  output %w\n}\n",
        2,
        10,
        "expected a weight name `@name` after `weight`, found `%w`",
    );
    check(
        "graph t {\n  input % x : f32[2]\n  output %x\n}\n",
        2,
        9,
        "expected a name after `%` (letters, digits, `_`, `.`, or a quoted name)",
    );
    check(
        &graph(&["%0 = relu(%x) : f32[2,3] +", "output %0"]),
        3,
        28,
        "unexpected character `+`",
    );
    check(
        &graph(&["relu(%x)", "output %x"]),
        3,
        3,
        "expected `input`, `weight`, `output` or a node definition `%name = op(...)`, found `relu`",
    );
}

#[test]
fn output_line_errors() {
    check(
        &graph(&[]),
        3,
        1,
        "expected an `output` line before the closing `}`",
    );
    check(
        &graph(&["output"]),
        4,
        1,
        "expected a value to output (`%value` or `@weight`), found `}`",
    );
    check(
        &graph(&["output %x %x"]),
        3,
        13,
        "expected `,` or the closing `}` after an output value, found `%x`",
    );
    check(
        &graph(&["output %x", "output %x"]),
        4,
        3,
        "expected `,` or the closing `}` after an output value, found `output`",
    );
    check(
        &format!("{}graph u {{", graph(&["output %x"])),
        5,
        1,
        "expected the end of the text after the graph's closing `}`, found `graph`",
    );
    check(
        "graph t {\n  input %x : f32[2]\n  output %x\n",
        4,
        1,
        "expected `,` or the closing `}` after an output value, found the end of the text",
    );
}

#[test]
fn unknown_op() {
    check(
        &graph(&["%0 = conv(%x) : f32[2,3]", "output %0"]),
        3,
        8,
        "unknown op `conv`; did you mean `conv2d`?",
    );
    check(
        &graph(&["%0 = frobnicate(%x) : f32[2,3]", "output %0"]),
        3,
        8,
        "unknown op `frobnicate` (docs/ir-text.md lists every op)",
    );
    check(
        &graph(&["%0 = input() : f32[2,3]", "output %0"]),
        3,
        8,
        "`input` is declared in the graph header, not used as an op",
    );
}

#[test]
fn wrong_arity_and_result_counts() {
    // Too few operands: at the closing parenthesis.
    check(
        &graph(&["%0 = add(%x) : f32[2,3]", "output %0"]),
        3,
        14,
        "add takes 2 operand(s), got 1",
    );
    // Too many: at the first operand too many.
    check(
        &graph(&["%0 = relu(%x, %x) : f32[2,3]", "output %0"]),
        3,
        17,
        "relu takes 1 operand(s), got 2",
    );
    check(
        &graph(&["%0 = concat() {axis=0} : f32[2,3]", "output %0"]),
        3,
        15,
        "concat takes at least 1 operand(s), got 0",
    );
    check(
        &graph(&[
            "weight @w : f32[1,3,1,1]",
            "%0 = conv2d(%x, @w, @w, @w) {stride=[1,1], pad=[0,0,0,0], groups=1} : f32[2,3]",
            "output %0",
        ]),
        4,
        27,
        "conv2d takes 2 to 3 operand(s), got 4",
    );
    check(
        &graph(&[
            "%a = split(%x) {axis=0, sizes=[1,1]} : f32[1,3]",
            "output %a",
        ]),
        3,
        3,
        "split produces 2 value(s), but 1 result name(s) are given",
    );
    check(
        &graph(&[
            "%a, %b = split(%x) {axis=0, sizes=[1,1]} : f32[1,3]",
            "output %a",
        ]),
        3,
        44,
        "2 result name(s) but 1 type(s) after the `:`",
    );
}

#[test]
fn bad_attributes() {
    // Wrong kind: at the attribute's name.
    check(
        &graph(&["%0 = softmax(%x) {axis=1.5} : f32[2,3]", "output %0"]),
        3,
        21,
        "softmax: attribute `axis` must be an integer, got `1.5`",
    );
    check(
        &graph(&[
            "%0 = reduce_sum(%x) {axes=1, keepdims=true} : f32[2,1]",
            "output %0",
        ]),
        3,
        24,
        "reduce_sum: attribute `axes` must be a list of integers, got `1`",
    );
    check(
        &graph(&[
            "%0 = reduce_sum(%x) {axes=[1], keepdims=yes} : f32[2,1]",
            "output %0",
        ]),
        3,
        34,
        "reduce_sum: attribute `keepdims` must be true or false, got `yes`",
    );
    check(
        &graph(&["%0 = softmax(%x) {axis=-1} : f32[2,3]", "output %0"]),
        3,
        21,
        "softmax: attribute `axis` must be non-negative, got -1",
    );
    // Unknown: at the unknown one.
    check(
        &graph(&["%0 = softmax(%x) {axis=1, dim=1} : f32[2,3]", "output %0"]),
        3,
        29,
        "softmax: unknown attribute `dim`",
    );
    // Missing: at the op, since there is no attribute to point at.
    check(
        &graph(&["%0 = softmax(%x) : f32[2,3]", "output %0"]),
        3,
        8,
        "softmax: missing attribute `axis`",
    );
    check(
        &graph(&["%0 = softmax(%x) {} : f32[2,3]", "output %0"]),
        3,
        8,
        "softmax: missing attribute `axis`",
    );
    // Given twice: at the second.
    check(
        &graph(&["%0 = softmax(%x) {axis=1, axis=1} : f32[2,3]", "output %0"]),
        3,
        29,
        "attribute `axis` is given twice (first at line 3, column 21)",
    );
    // A word the op does not know: at the op.
    check(
        &graph(&[
            "%0 = pad(%x) {pads=[0,0,0,0], mode=wrap} : f32[2,3]",
            "output %0",
        ]),
        3,
        8,
        "pad: unknown mode `wrap` (expected constant, reflect or edge)",
    );
    // Valid attributes that do not fit the operand: the verifier, at the node.
    check(
        &graph(&["%0 = softmax(%x) {axis=2} : f32[2,3]", "output %0"]),
        3,
        3,
        "%0 (softmax): softmax: axis 2 out of range for rank 2",
    );
}

#[test]
fn shape_mismatch() {
    check(
        &graph(&["%0 = relu(%x) : f32[3,2]", "output %0"]),
        3,
        3,
        "%0 (relu): result is declared f32[3,2] but the op produces f32[2,3]",
    );
    check(
        &graph(&["%0 = cast(%x) {to=i64} : f32[2,3]", "output %0"]),
        3,
        3,
        "%0 (cast): result is declared f32[2,3] but the op produces i64[2,3]",
    );
    check(
        &graph(&[
            "%a, %b = split(%x) {axis=1, sizes=[1,2]} : f32[2,1], f32[2,1]",
            "output %a",
        ]),
        3,
        3,
        "%a (split): result 1 is declared f32[2,1] but the op produces f32[2,2]",
    );
    check(
        &graph(&[
            "weight @w : f32[4]",
            "%0 = add(%x, @w) : f32[2,3]",
            "output %0",
        ]),
        4,
        3,
        "%0 (add): add: shapes f32[2,3] and f32[4] do not broadcast",
    );
}

#[test]
fn undefined_names() {
    check(
        &graph(&["%0 = relu(%y) : f32[2,3]", "output %0"]),
        3,
        13,
        "undefined value %y",
    );
    check(
        &graph(&["%0 = relu(%xx) : f32[2,3]", "output %0"]),
        3,
        13,
        "undefined value %xx; did you mean %x?",
    );
    check(
        &graph(&["%0 = relu(@x) : f32[2,3]", "output %0"]),
        3,
        13,
        "undefined weight @x (there is a value %x)",
    );
    check(
        &graph(&[
            "weight @w : f32[3]",
            "%0 = add(%x, %w) : f32[2,3]",
            "output %0",
        ]),
        4,
        16,
        "undefined value %w (there is a weight @w)",
    );
    check(
        &graph(&["output %x, %\"a/b\""]),
        3,
        14,
        "undefined value %\"a/b\"",
    );
}

#[test]
fn duplicate_names() {
    check(
        &graph(&["input %x : f32[2]", "output %x"]),
        3,
        9,
        "%x is already defined (at line 2, column 9)",
    );
    check(
        &graph(&["%x = relu(%x) : f32[2,3]", "output %x"]),
        3,
        3,
        "%x is already defined (at line 2, column 9)",
    );
    check(
        &graph(&[
            "%a, %a = split(%x) {axis=0, sizes=[1,1]} : f32[1,3], f32[1,3]",
            "output %a",
        ]),
        3,
        7,
        "%a is already defined (at line 3, column 3)",
    );
    check(
        &graph(&["weight @w : f32[2]", "weight @w : f32[2]", "output %x"]),
        4,
        10,
        "@w is already defined (at line 3, column 10)",
    );
}

#[test]
fn cycles() {
    check(
        &graph(&[
            "%a = add(%x, %c) : f32[2,3]",
            "%b = relu(%a) : f32[2,3]",
            "%c = exp(%b) : f32[2,3]",
            "output %c",
        ]),
        3,
        3,
        "the values form a cycle: %a -> %b -> %c -> %a (each is an operand of the next)",
    );
    check(
        &graph(&["%a = relu(%a) : f32[2,3]", "output %a"]),
        3,
        3,
        "the values form a cycle: %a -> %a (each is an operand of the next)",
    );
    // A node downstream of a cycle is not on it and is not named.
    check(
        &graph(&[
            "%d = relu(%b) : f32[2,3]",
            "%b = relu(%c) : f32[2,3]",
            "%c = relu(%b) : f32[2,3]",
            "output %d",
        ]),
        4,
        3,
        "the values form a cycle: %b -> %c -> %b (each is an operand of the next)",
    );
}

/// A token that does not lex is reported only when the parser reaches it,
/// so an earlier syntax error wins.
#[test]
fn errors_come_in_text_order() {
    check(
        &graph(&["%0 = relu(%x) : f32[-3 \"abc", "output %0"]),
        3,
        23,
        "expected a dimension (a non-negative integer), found `-3`",
    );
    check(
        &graph(&["%0 = relu(%x) : f32[2,3] \"abc", "output %0"]),
        3,
        28,
        "unterminated quoted name (missing closing `\"`)",
    );
    check(
        &graph(&["output %x } +"]),
        3,
        15,
        "unexpected character `+`",
    );
}

#[test]
fn quoting_errors() {
    check(
        "graph t {\n  input %\"x : f32[2]\n  output %x\n}\n",
        2,
        10,
        "unterminated quoted name (missing closing `\"`)",
    );
    check(
        "graph \"t",
        1,
        7,
        "unterminated quoted name (missing closing `\"`)",
    );
    check(
        "graph t {\n  input %\"a\\tb\" : f32[2]\n  output %x\n}\n",
        2,
        12,
        "unknown escape `\\t` in a quoted name (only `\\\"` and `\\\\` are escapes)",
    );
    check(
        "graph t {\n  input %\"a\\",
        2,
        10,
        "unterminated quoted name (missing closing `\"`)",
    );
}

#[test]
fn huge_numbers() {
    check(
        &graph(&["%0 = relu(%x) : f32[99999999999999999999]", "output %0"]),
        3,
        23,
        "dimension `99999999999999999999` is too large",
    );
    check(
        "graph t {\n  input %x : f32[4294967296,4294967296]\n  output %x\n}\n",
        2,
        14,
        "type f32[4294967296,4294967296] is too large: its size in bytes does not fit in 63 bits",
    );
    check(
        &graph(&[
            "%0 = softmax(%x) {axis=99999999999999999999} : f32[2,3]",
            "output %0",
        ]),
        3,
        26,
        "integer `99999999999999999999` does not fit in 64 bits",
    );
    check(
        &graph(&[
            "%0 = transpose(%x) {perm=[0,-99999999999999999999]} : f32[2,3]",
            "output %0",
        ]),
        3,
        31,
        "integer `-99999999999999999999` does not fit in 64 bits",
    );
    check(
        &graph(&[
            "%0 = layer_norm(%x, %x) {axis=0, eps=1e39} : f32[2,3]",
            "output %0",
        ]),
        3,
        40,
        "float `1e39` is out of range for f32 (write `inf` or `-inf` for infinity)",
    );
    // In range for i64 but absurd: the op's checks reject them, without overflow.
    check(
        &graph(&[
            "%0 = softmax(%x) {axis=9223372036854775807} : f32[2,3]",
            "output %0",
        ]),
        3,
        3,
        "%0 (softmax): softmax: axis 9223372036854775807 out of range for rank 2",
    );
}

/// Values in range for the attribute but large enough that shape arithmetic
/// on them could overflow: the verifier must give a located error (or accept
/// the graph when it is in fact valid), never panic.
#[test]
fn overflowing_shape_arithmetic_is_an_error() {
    // (statement, what the message must say)
    let errors = [
        (
            "%0 = pad(%x) {pads=[9223372036854775807,0,9223372036854775807,0], mode=constant, value=0.0} : f32[2,3]",
            "overflow",
        ),
        (
            "%0 = conv2d(%x9, @w) {stride=[1,1], pad=[9223372036854775807,0,9223372036854775807,0], groups=1} : f32[1,1,9,9]",
            "overflow",
        ),
        (
            "%0 = conv2d(%x4, @w3) {stride=[1,1], pad=[0,0,0,0], dilation=[9223372036854775807,1], groups=1} : f32[1,1,1,1]",
            "overflow",
        ),
        (
            "%0 = max_pool2d(%x9) {kernel=[9223372036854775807,1], stride=[1,1], pad=[9223372036854775806,0,9223372036854775806,0]} : f32[1,1,9,9]",
            "overflow",
        ),
        (
            "%0, %1, %2 = split(%x) {axis=1, sizes=[9223372036854775807,9223372036854775807,2]} : f32[2,1], f32[2,1], f32[2,1]",
            "overflow",
        ),
        (
            "%0 = gather(%x) {axis=0, indices=[0], indices_shape=[4294967296,4294967296,4]} : f32[2,3]",
            "do not fill",
        ),
    ];
    // 2^60 - 1 elements each (the most an f32 type may have): seventeen of
    // them overflow 64 bits.
    let concat = format!(
        "%0 = concat({}) {{axis=0}} : f32[1]",
        ["%big"; 17].join(", ")
    );
    let errors = errors
        .iter()
        .copied()
        .chain([(concat.as_str(), "overflow")]);
    // Steps at the ends of the i64 range take one element: valid graphs.
    let valid = [
        "%0 = slice(%x) {axes=[1], starts=[0], ends=[3], steps=[9223372036854775807]} : f32[2,1]",
        "%0 = slice(%x) {axes=[1], starts=[2], ends=[-1], steps=[-9223372036854775808]} : f32[2,1]",
    ];
    let src = |body: &str| {
        format!(
            "graph t {{\n  input %x : f32[2,3]\n  input %x4 : f32[1,1,1,1]\n  \
             input %x9 : f32[1,1,9,9]\n  input %big : f32[1152921504606846975]\n  weight @w : f32[1,1,1,1]\n  \
             weight @w3 : f32[1,1,4,4]\n  {body}\n  output %0\n}}\n"
        )
    };
    for (body, want) in errors {
        match parse(&src(body)) {
            Err(IrError::Parse {
                line: 8,
                col: 3,
                msg,
            }) if msg.contains(want) => {}
            other => panic!("{body}\n=> {other:?}"),
        }
    }
    for body in valid {
        if let Err(e) = parse(&src(body)) {
            panic!("{body}\n=> {e}");
        }
    }
}

/// A long chain closed into a cycle: the cycle search must not recurse per
/// node (a recursive SCC search overflowed the stack at this size).
#[test]
fn long_cycle_does_not_overflow_the_stack() {
    let n = 100_000;
    let mut src = String::from("graph t {\n");
    for i in 0..n {
        let operand = if i == 0 { n - 1 } else { i - 1 };
        src.push_str(&format!("  %{i} = relu(%{operand}) : f32[1]\n"));
    }
    src.push_str("  output %0\n}\n");
    let e = parse(&src).unwrap_err().to_string();
    assert!(
        e.starts_with("line 2, column 3: the values form a cycle: %0 -> %1 -> %2 -> "),
        "{}",
        &e[..e.len().min(200)]
    );
    assert!(e.ends_with(&format!(
        "-> %{} -> %0 (each is an operand of the next)",
        n - 1
    )));
}
