//! The `.kir` lexer: turns source text into tokens with 1-based positions.
//!
//! Tokens are produced on demand, so the first error in the text is the one
//! reported even when something later would not lex either.

use std::fmt;
use std::iter::Peekable;
use std::str::Chars;

use crate::error::IrError;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    /// An [`IrError::Parse`] at this position.
    pub fn error(self, msg: impl Into<String>) -> IrError {
        IrError::Parse {
            line: self.line,
            col: self.col,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.col)
    }
}

/// What a token is. Punctuation is one character; everything else carries
/// its text (names already unquoted and unescaped).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    /// A bare word: a keyword, dtype, attribute key, number or word value.
    /// Numbers are kept as text: only the parser knows whether an integer,
    /// a float or a dimension is wanted.
    Word(String),
    /// A quoted name without a sigil (the graph name).
    Str(String),
    /// `%name` or `%"name"`.
    Value(String),
    /// `@name` or `@"name"`.
    Weight(String),
    /// One of `= , : ( ) { } [ ]`.
    Punct(char),
    /// The end of the text.
    Eof,
    /// Text that does not lex. The parser holds the error and reports it
    /// only when it looks at this token, so that an error earlier in the
    /// text is reported first.
    Bad,
}

impl fmt::Display for Tok {
    /// How an error message names the token it found.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "`{w}`"),
            Tok::Str(s) => write!(f, "`{}`", quote(s)),
            Tok::Value(n) => write!(f, "`%{}`", name(n)),
            Tok::Weight(n) => write!(f, "`@{}`", name(n)),
            Tok::Punct(c) => write!(f, "`{c}`"),
            Tok::Eof => f.write_str("the end of the text"),
            Tok::Bad => f.write_str("text that is not a token"),
        }
    }
}

/// A token and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: Pos,
}

/// Characters a name may contain without quotes.
pub(crate) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

/// Whether `s` can be printed without quotes.
pub(crate) fn is_bare(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_name_char)
}

/// `s` in quotes with `"` and `\` escaped.
pub(crate) fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// `s` as the text format spells a name: bare when it can be, else quoted.
pub(crate) fn name(s: &str) -> std::borrow::Cow<'_, str> {
    if is_bare(s) {
        s.into()
    } else {
        quote(s).into()
    }
}

/// The lexer: a cursor over the source.
pub(crate) struct Lexer<'a> {
    chars: Peekable<Chars<'a>>,
    pos: Pos,
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Lexer<'a> {
        Lexer {
            chars: src.chars().peekable(),
            pos: Pos { line: 1, col: 1 },
        }
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.pos.line += 1;
            self.pos.col = 1;
        } else {
            self.pos.col += 1;
        }
        Some(c)
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    /// The character after the next one, for the two-character decisions
    /// (`-` before a digit, a sign after an exponent).
    fn peek2(&self) -> Option<char> {
        let mut it = self.chars.clone();
        it.next();
        it.next()
    }

    fn skip_blanks(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.bump();
            } else if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else {
                break;
            }
        }
    }

    /// The next token, or the error that stops lexing.
    pub fn next_token(&mut self) -> Result<Token, IrError> {
        self.skip_blanks();
        let pos = self.pos;
        let Some(c) = self.peek() else {
            return Ok(Token { tok: Tok::Eof, pos });
        };
        let tok = match c {
            '=' | ',' | ':' | '(' | ')' | '{' | '}' | '[' | ']' => {
                self.bump();
                Tok::Punct(c)
            }
            '%' | '@' => {
                self.bump();
                let n = self.sigil_name(pos, c)?;
                if c == '%' {
                    Tok::Value(n)
                } else {
                    Tok::Weight(n)
                }
            }
            '"' => Tok::Str(self.quoted(pos)?),
            '-' if self.peek2().is_some_and(is_name_char) => {
                self.bump();
                let mut w = String::from("-");
                self.word_into(&mut w);
                Tok::Word(w)
            }
            c if is_name_char(c) => {
                let mut w = String::new();
                self.word_into(&mut w);
                Tok::Word(w)
            }
            c => {
                return Err(pos.error(format!("unexpected character `{}`", c.escape_debug())));
            }
        };
        Ok(Token { tok, pos })
    }

    /// Reads a run of name characters. A word that starts like a number may
    /// also contain a signed exponent (`1e-5`, `2.5E+3`): the sign is taken
    /// only right after the `e` so that names never contain one.
    fn word_into(&mut self, w: &mut String) {
        let numeric = w == "-" || self.peek().is_some_and(|c| c.is_ascii_digit());
        loop {
            match self.peek() {
                Some(c) if is_name_char(c) => {
                    w.push(c);
                    self.bump();
                }
                Some(s @ ('+' | '-'))
                    if numeric
                        && w.ends_with(['e', 'E'])
                        && self.peek2().is_some_and(|d| d.is_ascii_digit()) =>
                {
                    w.push(s);
                    self.bump();
                }
                _ => return,
            }
        }
    }

    /// The name after a `%` or `@`: bare or quoted, never empty when bare.
    fn sigil_name(&mut self, pos: Pos, sigil: char) -> Result<String, IrError> {
        match self.peek() {
            Some('"') => {
                let at = self.pos;
                self.quoted(at)
            }
            Some(c) if is_name_char(c) => {
                let mut n = String::new();
                while let Some(c) = self.peek().filter(|&c| is_name_char(c)) {
                    n.push(c);
                    self.bump();
                }
                Ok(n)
            }
            _ => Err(pos.error(format!(
                "expected a name after `{sigil}` (letters, digits, `_`, `.`, or a quoted name)"
            ))),
        }
    }

    /// A quoted name starting at `start` (the opening quote). Only `\"` and
    /// `\\` are escapes; every other character stands for itself, newlines
    /// included, so any string the graph API accepts can be printed.
    fn quoted(&mut self, start: Pos) -> Result<String, IrError> {
        self.bump();
        let mut s = String::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None => {
                    return Err(start.error("unterminated quoted name (missing closing `\"`)"));
                }
                Some('"') => return Ok(s),
                Some('\\') => match self.bump() {
                    Some(c @ ('"' | '\\')) => s.push(c),
                    Some(c) => {
                        return Err(at.error(format!(
                            "unknown escape `\\{}` in a quoted name (only `\\\"` and `\\\\` are escapes)",
                            c.escape_debug()
                        )));
                    }
                    None => {
                        return Err(start.error("unterminated quoted name (missing closing `\"`)"));
                    }
                },
                Some(c) => s.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Result<Vec<(Tok, usize, usize)>, IrError> {
        let mut lx = Lexer::new(src);
        let mut out = Vec::new();
        loop {
            let t = lx.next_token()?;
            if t.tok == Tok::Eof {
                return Ok(out);
            }
            out.push((t.tok, t.pos.line, t.pos.col));
        }
    }

    fn w(s: &str) -> Tok {
        Tok::Word(s.into())
    }

    #[test]
    fn numbers_words_and_names() {
        assert_eq!(
            toks("eps=1e-5, x=-inf # c\n%a.b @\"w/\\\"q\\\\\"").unwrap(),
            vec![
                (w("eps"), 1, 1),
                (Tok::Punct('='), 1, 4),
                (w("1e-5"), 1, 5),
                (Tok::Punct(','), 1, 9),
                (w("x"), 1, 11),
                (Tok::Punct('='), 1, 12),
                (w("-inf"), 1, 13),
                (Tok::Value("a.b".into()), 2, 1),
                (Tok::Weight("w/\"q\\".into()), 2, 6),
            ]
        );
        // A sign only joins a word right after the exponent of a number.
        assert_eq!(
            toks("reflect-1 2E+3").unwrap(),
            vec![(w("reflect"), 1, 1), (w("-1"), 1, 8), (w("2E+3"), 1, 11)]
        );
    }

    #[test]
    fn errors_have_positions() {
        let e = toks("  \"abc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1, column 3: unterminated quoted name (missing closing `\"`)"
        );
        let e = toks("%\"a\\nb\"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1, column 4: unknown escape `\\n` in a quoted name (only `\\\"` and `\\\\` are escapes)"
        );
        let e = toks("x\n %").unwrap_err();
        assert_eq!(e.to_string().split(':').next(), Some("line 2, column 2"));
        let e = toks("a + b").unwrap_err();
        assert_eq!(e.to_string(), "line 1, column 3: unexpected character `+`");
    }

    #[test]
    fn quoting_round_trips() {
        for s in ["x", "a/b:c", "", "q\"\\", "1e-5", "sp ace"] {
            let printed = format!("%{}", name(s));
            assert_eq!(toks(&printed).unwrap(), vec![(Tok::Value(s.into()), 1, 1)]);
        }
        assert_eq!(name("conv.weight_0"), "conv.weight_0");
        assert_eq!(name("a/b"), "\"a/b\"");
    }
}
