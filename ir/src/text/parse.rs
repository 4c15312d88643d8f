//! The `.kir` parser: recursive descent over the lexer's tokens, then name
//! resolution, a cycle check and the verifier, every error placed at a line
//! and column.
//!
//! Values may be used before the line that defines them, so parsing is two
//! phases: statements are read in order and their nodes added with
//! [`Graph::add_raw`]; once the closing `}` is read, every operand is looked
//! up and connected with [`Graph::connect`]. Errors found while reading
//! (syntax, unknown ops, attributes, arity, duplicate names) therefore come in
//! text order, before any undefined-name error.

use std::collections::{BTreeSet, HashMap};

use petgraph::Direction;
use petgraph::visit::EdgeRef;

use crate::error::IrError;
use crate::graph::{Graph, NodeId, Value, ValueInfo};
use crate::op::{Attr, OP_NAMES, Op};
use crate::types::{DType, TensorType};
use crate::verify::verify;

use super::lexer::{Lexer, Pos, Tok, Token, is_bare, name};

/// See [`crate::text::parse()`].
pub(crate) fn parse(src: &str) -> Result<Graph, IrError> {
    let mut p = Parser::new(src)?;
    p.file()?;
    p.resolve()?;
    p.check_cycles()?;
    verify(&p.g).map_err(|e| p.place(e))?;
    Ok(p.g)
}

/// An operand as written: a name in one of the two namespaces.
enum Ref {
    Value(String),
    Weight(String),
}

/// A node whose operands are connected once every name is known.
struct Pending {
    node: NodeId,
    operands: Vec<(Ref, Pos)>,
}

struct Parser<'a> {
    lx: Lexer<'a>,
    /// The lookahead token.
    tok: Token,
    /// Why the lookahead is [`Tok::Bad`].
    lex_error: Option<IrError>,
    g: Graph,
    /// Where each `%` and `@` name is defined, for duplicate errors.
    value_defs: HashMap<String, Pos>,
    weight_defs: HashMap<String, Pos>,
    /// Where each node's statement starts: verifier errors name a node, and
    /// this turns the name back into a place in the text.
    node_defs: HashMap<NodeId, Pos>,
    pending: Vec<Pending>,
    outputs: Vec<(Ref, Pos)>,
    /// The `graph` keyword and the `output` keyword: where graph-level errors go.
    header: Pos,
    output_pos: Pos,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Result<Parser<'a>, IrError> {
        let mut lx = Lexer::new(src);
        let tok = lx.next_token()?;
        let start = tok.pos;
        Ok(Parser {
            lx,
            tok,
            lex_error: None,
            g: Graph::new(""),
            value_defs: HashMap::new(),
            weight_defs: HashMap::new(),
            node_defs: HashMap::new(),
            pending: Vec::new(),
            outputs: Vec::new(),
            header: start,
            output_pos: start,
        })
    }

    /// Consumes the lookahead and returns it; fails if it did not lex.
    fn bump(&mut self) -> Result<Token, IrError> {
        if let Some(e) = &self.lex_error {
            return Err(e.clone());
        }
        let next = match self.lx.next_token() {
            Ok(t) => t,
            Err(e) => {
                let pos = match e {
                    IrError::Parse { line, col, .. } => Pos { line, col },
                    _ => self.tok.pos,
                };
                self.lex_error = Some(e);
                Token { tok: Tok::Bad, pos }
            }
        };
        Ok(std::mem::replace(&mut self.tok, next))
    }

    /// An error at the lookahead: "expected {what}, found {token}", or the
    /// lexer's error if the lookahead did not lex.
    fn expected(&self, what: &str) -> IrError {
        if let Some(e) = &self.lex_error {
            return e.clone();
        }
        self.tok
            .pos
            .error(format!("expected {what}, found {}", self.tok.tok))
    }

    fn is_punct(&self, c: char) -> bool {
        self.tok.tok == Tok::Punct(c)
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(&self.tok.tok, Tok::Word(x) if x == w)
    }

    /// Consumes punctuation `c`, or fails with "expected `c` {context}".
    fn punct(&mut self, c: char, context: &str) -> Result<Pos, IrError> {
        self.punct_with(c, || context.to_string())
    }

    /// [`Parser::punct`] with a context built only when it is needed (it is
    /// on the path of every statement, and usually the text is right).
    fn punct_with(&mut self, c: char, context: impl FnOnce() -> String) -> Result<Pos, IrError> {
        if self.is_punct(c) {
            Ok(self.bump()?.pos)
        } else {
            Err(self.expected(&format!("`{c}` {}", context())))
        }
    }

    /// `graph NAME { statement* output }` and nothing after it.
    fn file(&mut self) -> Result<(), IrError> {
        if !self.is_word("graph") {
            return Err(self.expected("`graph` at the start of the text"));
        }
        self.header = self.bump()?.pos;
        let name = self.bump()?;
        self.g.name = match name.tok {
            Tok::Str(s) => s,
            Tok::Word(w) if is_bare(&w) => w,
            Tok::Word(w) => {
                return Err(name.pos.error(format!(
                    "graph name `{w}` must be quoted: bare names use only letters, digits, `_` and `.`"
                )));
            }
            other => {
                return Err(name.pos.error(format!(
                    "expected the graph's name after `graph`, found {other}"
                )));
            }
        };
        self.punct('{', "after the graph's name")?;
        loop {
            match &self.tok.tok {
                Tok::Word(w) if w == "input" || w == "weight" => self.leaf()?,
                Tok::Word(w) if w == "output" => break,
                Tok::Value(_) => self.node()?,
                Tok::Punct('}') => {
                    return Err(self
                        .tok
                        .pos
                        .error("expected an `output` line before the closing `}`"));
                }
                _ => {
                    return Err(self.expected(
                        "`input`, `weight`, `output` or a node definition `%name = op(...)`",
                    ));
                }
            }
        }
        self.output_pos = self.bump()?.pos;
        loop {
            let out = self.operand("a value to output (`%value` or `@weight`)")?;
            self.outputs.push(out);
            if self.is_punct(',') {
                self.bump()?;
            } else if self.is_punct('}') {
                break;
            } else {
                return Err(self.expected("`,` or the closing `}` after an output value"));
            }
        }
        self.bump()?;
        if self.tok.tok != Tok::Eof {
            return Err(self.expected("the end of the text after the graph's closing `}`"));
        }
        Ok(())
    }

    /// `input %name : TYPE` or `weight @name : TYPE`.
    fn leaf(&mut self) -> Result<(), IrError> {
        let kw = self.bump()?;
        let is_input = kw.tok == Tok::Word("input".into());
        let name = self.bump()?;
        let n = match (name.tok, is_input) {
            (Tok::Value(n), true) | (Tok::Weight(n), false) => n,
            (other, _) => {
                let want = if is_input {
                    "an input name `%name` after `input`"
                } else {
                    "a weight name `@name` after `weight`"
                };
                return Err(name.pos.error(format!("expected {want}, found {other}")));
            }
        };
        let what = if is_input { "input" } else { "weight" };
        self.punct_with(':', || format!("and a type after the {what}'s name"))?;
        let ty = self.ty()?;
        self.define(&n, !is_input, name.pos)?;
        let op = if is_input { Op::Input } else { Op::Weight };
        let id = self
            .g
            .add_raw(op, vec![ValueInfo { name: n, ty }])
            .map_err(|e| kw.pos.error(e.to_string()))?;
        self.node_defs.insert(id, kw.pos);
        Ok(())
    }

    /// Records a name's definition; a second definition is an error here.
    fn define(&mut self, n: &str, weight: bool, pos: Pos) -> Result<(), IrError> {
        let (defs, sigil) = if weight {
            (&mut self.weight_defs, '@')
        } else {
            (&mut self.value_defs, '%')
        };
        if let Some(first) = defs.get(n) {
            return Err(pos.error(format!(
                "{sigil}{} is already defined (at {first})",
                name(n)
            )));
        }
        defs.insert(n.to_string(), pos);
        Ok(())
    }

    /// `DTYPE[d0,d1,...]`.
    fn ty(&mut self) -> Result<TensorType, IrError> {
        let start = self.tok.pos;
        let Tok::Word(d) = &self.tok.tok else {
            return Err(self.expected("a type such as `f32[1,3,224,224]`"));
        };
        let dtype = DType::from_name(d).ok_or_else(|| {
            start.error(format!("unknown element type `{d}` (expected f32 or i64)"))
        })?;
        self.bump()?;
        self.punct('[', "after the element type")?;
        let mut shape = Vec::new();
        if self.is_punct(']') {
            self.bump()?;
        } else {
            loop {
                let t = self.bump()?;
                let dim = match &t.tok {
                    Tok::Word(w) if w.bytes().all(|b| b.is_ascii_digit()) => w
                        .parse::<usize>()
                        .map_err(|_| t.pos.error(format!("dimension `{w}` is too large")))?,
                    other => {
                        return Err(t.pos.error(format!(
                            "expected a dimension (a non-negative integer), found {other}"
                        )));
                    }
                };
                shape.push(dim);
                if self.is_punct(',') {
                    self.bump()?;
                } else if self.is_punct(']') {
                    self.bump()?;
                    break;
                } else {
                    return Err(self.expected("`,` or `]` in the shape"));
                }
            }
        }
        let ty = TensorType::new(dtype, shape);
        // refused here too (not only by the graph) to point at the text
        ty.check_size().map_err(|msg| start.error(msg))?;
        Ok(ty)
    }

    /// `%value` or `@weight`.
    fn operand(&mut self, what: &str) -> Result<(Ref, Pos), IrError> {
        let r = match &self.tok.tok {
            Tok::Value(n) => Ref::Value(n.clone()),
            Tok::Weight(n) => Ref::Weight(n.clone()),
            _ => return Err(self.expected(what)),
        };
        Ok((r, self.bump()?.pos))
    }

    /// `%a, %b = op(operands) {attrs} : TYPE, TYPE`.
    fn node(&mut self) -> Result<(), IrError> {
        let start = self.tok.pos;
        let mut results = Vec::new();
        loop {
            let t = self.bump()?;
            match t.tok {
                Tok::Value(n) => results.push((n, t.pos)),
                other => {
                    return Err(t.pos.error(format!(
                        "expected a result name `%name` after `,`, found {other}"
                    )));
                }
            }
            if self.is_punct(',') {
                self.bump()?;
            } else if self.is_punct('=') {
                self.bump()?;
                break;
            } else {
                return Err(self.expected("`,` or `=` after a result name"));
            }
        }
        let op_tok = self.bump()?;
        let Tok::Word(op_name) = op_tok.tok else {
            return Err(op_tok.pos.error(format!(
                "expected an op name after `=`, found {}",
                op_tok.tok
            )));
        };
        let op_pos = op_tok.pos;
        self.punct_with('(', || format!("after the op name `{op_name}`"))?;
        let mut operands = Vec::new();
        let close = if self.is_punct(')') {
            self.bump()?.pos
        } else {
            loop {
                operands.push(self.operand("an operand (`%value` or `@weight`)")?);
                if self.is_punct(',') {
                    self.bump()?;
                } else if self.is_punct(')') {
                    break self.bump()?.pos;
                } else {
                    return Err(self.expected("`,` or `)` after an operand"));
                }
            }
        };
        let mut attrs: Vec<(String, Attr)> = Vec::new();
        let mut attr_pos: Vec<Pos> = Vec::new();
        let had_attrs = self.is_punct('{');
        if had_attrs {
            self.bump()?;
            if self.is_punct('}') {
                self.bump()?;
            } else {
                loop {
                    let key = self.bump()?;
                    let Tok::Word(k) = key.tok else {
                        return Err(key
                            .pos
                            .error(format!("expected an attribute name, found {}", key.tok)));
                    };
                    self.punct_with('=', || format!("after the attribute name `{k}`"))?;
                    let v = self.attr_value()?;
                    if let Some(i) = attrs.iter().position(|(k2, _)| *k2 == k) {
                        return Err(key.pos.error(format!(
                            "attribute `{k}` is given twice (first at {})",
                            attr_pos[i]
                        )));
                    }
                    attrs.push((k, v));
                    attr_pos.push(key.pos);
                    if self.is_punct(',') {
                        self.bump()?;
                    } else if self.is_punct('}') {
                        self.bump()?;
                        break;
                    } else {
                        return Err(self.expected("`,` or `}` after an attribute"));
                    }
                }
            }
        }
        let types_pos = self.punct(
            ':',
            if had_attrs {
                "and the result types after the attributes"
            } else {
                "and the result types after the operand list"
            },
        )?;
        let mut types = vec![self.ty()?];
        while self.is_punct(',') {
            self.bump()?;
            types.push(self.ty()?);
        }

        let op = Op::from_parts(&op_name, &attrs).map_err(|msg| {
            if msg.starts_with("unknown op") {
                return op_pos.error(unknown_op(&op_name));
            }
            // `from_parts` names the attribute it objects to; point at it
            // when it is in the text (a missing one is not: point at the op).
            let at = attrs
                .iter()
                .position(|(k, _)| msg.contains(&format!("attribute `{k}`")))
                .map_or(op_pos, |i| attr_pos[i]);
            at.error(msg)
        })?;
        if op.num_outputs() != results.len() {
            return Err(start.error(format!(
                "{} produces {} value(s), but {} result name(s) are given",
                op.name(),
                op.num_outputs(),
                results.len()
            )));
        }
        if types.len() != results.len() {
            return Err(types_pos.error(format!(
                "{} result name(s) but {} type(s) after the `:`",
                results.len(),
                types.len()
            )));
        }
        let ar = op.arity();
        if operands.len() < ar.min || operands.len() > ar.max {
            let at = operands.get(ar.max).map_or(close, |(_, p)| *p);
            return Err(at.error(format!(
                "{} takes {} operand(s), got {}",
                op.name(),
                ar,
                operands.len()
            )));
        }
        for (n, pos) in &results {
            self.define(n, false, *pos)?;
        }
        let infos = results
            .into_iter()
            .zip(types)
            .map(|((name, _), ty)| ValueInfo { name, ty })
            .collect();
        let id = self
            .g
            .add_raw(op, infos)
            .map_err(|e| start.error(e.to_string()))?;
        self.node_defs.insert(id, start);
        self.pending.push(Pending { node: id, operands });
        Ok(())
    }

    /// An attribute value: a number, `true`/`false`, a word, or `[int, ...]`.
    fn attr_value(&mut self) -> Result<Attr, IrError> {
        if self.is_punct('[') {
            self.bump()?;
            let mut v = Vec::new();
            if self.is_punct(']') {
                self.bump()?;
                return Ok(Attr::Ints(v));
            }
            loop {
                let t = self.bump()?;
                match &t.tok {
                    Tok::Word(w) => match literal(w, t.pos)? {
                        Attr::Int(i) => v.push(i),
                        _ => {
                            return Err(t
                                .pos
                                .error(format!("expected an integer in the list, found `{w}`")));
                        }
                    },
                    other => {
                        return Err(t
                            .pos
                            .error(format!("expected an integer in the list, found {other}")));
                    }
                }
                if self.is_punct(',') {
                    self.bump()?;
                } else if self.is_punct(']') {
                    self.bump()?;
                    return Ok(Attr::Ints(v));
                } else {
                    return Err(self.expected("`,` or `]` in the list"));
                }
            }
        }
        let t = self.bump()?;
        match &t.tok {
            Tok::Word(w) => literal(w, t.pos),
            other => Err(t.pos.error(format!(
                "expected an attribute value (a number, `true`, `false`, a word or a `[...]` list), found {other}"
            ))),
        }
    }

    /// Connects every operand and output now that all names are known.
    fn resolve(&mut self) -> Result<(), IrError> {
        for p in std::mem::take(&mut self.pending) {
            for (i, (r, pos)) in p.operands.iter().enumerate() {
                let v = self.lookup(r, *pos)?;
                self.g.connect(v, p.node, i);
            }
        }
        let outs = std::mem::take(&mut self.outputs);
        let outputs = outs
            .iter()
            .map(|(r, pos)| self.lookup(r, *pos))
            .collect::<Result<Vec<_>, _>>()?;
        self.g.set_outputs(outputs);
        Ok(())
    }

    fn lookup(&self, r: &Ref, pos: Pos) -> Result<Value, IrError> {
        // (found, the same name in the other namespace, how to say it)
        let (found, other, kind, sigil, other_kind, other_sigil, defs) = match r {
            Ref::Value(n) => (
                self.g.value_by_name(n),
                self.g.weight_by_name(n),
                "value",
                '%',
                "weight",
                '@',
                &self.value_defs,
            ),
            Ref::Weight(n) => (
                self.g.weight_by_name(n),
                self.g.value_by_name(n),
                "weight",
                '@',
                "value",
                '%',
                &self.weight_defs,
            ),
        };
        if let Some(v) = found {
            return Ok(v);
        }
        let (Ref::Value(n) | Ref::Weight(n)) = r;
        let mut msg = format!("undefined {kind} {sigil}{}", name(n));
        if other.is_some() {
            msg.push_str(&format!(
                " (there is a {other_kind} {other_sigil}{})",
                name(n)
            ));
        } else if let Some(near) = closest(n, defs.keys().map(String::as_str)) {
            msg.push_str(&format!("; did you mean {sigil}{}?", name(near)));
        }
        Err(pos.error(msg))
    }

    /// Reports a cycle by its values, at the earliest-defined node on it. The
    /// verifier would find it too, but names only one node, which need not
    /// even lie on the cycle. Iterative throughout (petgraph's `tarjan_scc`
    /// recurses once per node and overflows the stack on long chains).
    fn check_cycles(&self) -> Result<(), IrError> {
        let pg = self.g.petgraph();
        let mut indeg: HashMap<NodeId, usize> = pg
            .node_indices()
            .map(|n| (n, pg.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: Vec<NodeId> = indeg
            .iter()
            .filter(|&(_, &d)| d == 0)
            .map(|(&n, _)| n)
            .collect();
        while let Some(n) = ready.pop() {
            for e in pg.edges(n) {
                let d = indeg
                    .get_mut(&e.target())
                    .expect("an edge's target is a node");
                *d -= 1;
                if *d == 0 {
                    ready.push(e.target());
                }
            }
        }
        let stuck: BTreeSet<NodeId> = indeg
            .into_iter()
            .filter(|&(_, d)| d > 0)
            .map(|(n, _)| n)
            .collect();
        let Some(&first) = stuck.first() else {
            return Ok(());
        };
        // Every stuck node still has an operand produced by a stuck node, so
        // walking back through such operands must come round to a node
        // already visited; the stretch from there on is a cycle.
        let mut visited: HashMap<NodeId, usize> = HashMap::new();
        let mut walk = Vec::new();
        let mut n = first;
        while !visited.contains_key(&n) {
            visited.insert(n, walk.len());
            walk.push(n);
            n = pg
                .edges_directed(n, Direction::Incoming)
                .map(|e| e.source())
                .filter(|s| stuck.contains(s))
                .min()
                .expect("a node left over by Kahn's algorithm has a left-over operand");
        }
        // The walk went against the data flow; turn it round and start at
        // the node defined first.
        let mut cycle: Vec<NodeId> = walk[visited[&n]..].iter().rev().copied().collect();
        let k = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
        cycle.rotate_left(k);
        cycle.push(cycle[0]);
        let names: Vec<String> = cycle
            .iter()
            .map(|&id| self.g.display_value(Value::of(id)))
            .collect();
        let pos = self
            .node_defs
            .get(&cycle[0])
            .copied()
            .unwrap_or(self.header);
        Err(pos.error(format!(
            "the values form a cycle: {} (each is an operand of the next)",
            names.join(" -> ")
        )))
    }

    /// Places a verifier error at the statement of the node it names.
    fn place(&self, e: IrError) -> IrError {
        let pos = match &e {
            IrError::Node { node, .. } => self
                .g
                .node_ids()
                .find(|&id| self.g.display_node(id) == *node)
                .and_then(|id| self.node_defs.get(&id).copied())
                .unwrap_or(self.header),
            IrError::Graph(_) => self.output_pos,
            _ => self.header,
        };
        pos.error(e.to_string())
    }
}

/// Classifies a bare word used as a literal.
fn literal(w: &str, pos: Pos) -> Result<Attr, IrError> {
    match w {
        "true" => return Ok(Attr::Bool(true)),
        "false" => return Ok(Attr::Bool(false)),
        "inf" => return Ok(Attr::Float(f32::INFINITY)),
        "-inf" => return Ok(Attr::Float(f32::NEG_INFINITY)),
        "NaN" => return Ok(Attr::Float(f32::NAN)),
        _ => {}
    }
    let digits = w.strip_prefix('-').unwrap_or(w);
    let numeric = digits.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if !numeric {
        return if w.starts_with('-') {
            Err(pos.error(format!("invalid number `{w}`")))
        } else {
            Ok(Attr::Word(w.to_string()))
        };
    }
    if w.contains(['.', 'e', 'E']) {
        let x: f32 = w
            .parse()
            .map_err(|_| pos.error(format!("invalid number `{w}`")))?;
        if x.is_infinite() {
            return Err(pos.error(format!(
                "float `{w}` is out of range for f32 (write `inf` or `-inf` for infinity)"
            )));
        }
        Ok(Attr::Float(x))
    } else if digits.bytes().all(|b| b.is_ascii_digit()) {
        w.parse()
            .map(Attr::Int)
            .map_err(|_| pos.error(format!("integer `{w}` does not fit in 64 bits")))
    } else {
        Err(pos.error(format!("invalid number `{w}`")))
    }
}

fn unknown_op(name: &str) -> String {
    match closest(name, OP_NAMES.iter().copied()) {
        Some(near) => format!("unknown op `{name}`; did you mean `{near}`?"),
        None => format!("unknown op `{name}` (docs/ir-text.md lists every op)"),
    }
}

/// The candidate nearest to `s` by edit distance, if it is near enough to be
/// a plausible typo: about a third of the characters, and never all of them
/// (else every one-letter name would "suggest" every other).
fn closest<'c>(s: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    let len = s.chars().count();
    let limit = len.div_ceil(3);
    candidates
        .filter(|c| *c != s)
        .map(|c| (edit_distance(s, c), c))
        .filter(|&(d, _)| d <= limit && d < len)
        .min()
        .map(|(_, c)| c)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        let p = Pos { line: 1, col: 1 };
        assert_eq!(literal("3", p), Ok(Attr::Int(3)));
        assert_eq!(literal("-3", p), Ok(Attr::Int(-3)));
        assert_eq!(literal("1e-5", p), Ok(Attr::Float(1e-5)));
        assert_eq!(literal("6.0", p), Ok(Attr::Float(6.0)));
        assert_eq!(literal("-inf", p), Ok(Attr::Float(f32::NEG_INFINITY)));
        assert_eq!(literal(".5", p), Ok(Attr::Float(0.5)));
        assert_eq!(literal("-2.5E+3", p), Ok(Attr::Float(-2500.0)));
        assert_eq!(literal("reflect", p), Ok(Attr::Word("reflect".into())));
        assert_eq!(literal("_x", p), Ok(Attr::Word("_x".into())));
        assert_eq!(literal("true", p), Ok(Attr::Bool(true)));
        assert!(matches!(literal("NaN", p), Ok(Attr::Float(x)) if x.is_nan()));
        for bad in ["1x", "-x", "1.2.3", "0x10", "1e", "1_0", ".x", "-NaN"] {
            let e = literal(bad, p).unwrap_err().to_string();
            assert_eq!(e, format!("line 1, column 1: invalid number `{bad}`"));
        }
        assert!(
            literal("1e39", p)
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
        assert!(
            literal("9223372036854775808", p)
                .unwrap_err()
                .to_string()
                .contains("does not fit in 64 bits")
        );
        assert_eq!(literal("-9223372036854775808", p), Ok(Attr::Int(i64::MIN)));
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            unknown_op("conv"),
            "unknown op `conv`; did you mean `conv2d`?"
        );
        assert_eq!(
            unknown_op("layernorm"),
            "unknown op `layernorm`; did you mean `layer_norm`?"
        );
        assert_eq!(
            unknown_op("frobnicate"),
            "unknown op `frobnicate` (docs/ir-text.md lists every op)"
        );
    }
}
