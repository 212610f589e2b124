//! A cursor over the tokens, with the checks every part of the parser uses.

use super::ast::Immediate;
use super::lex::{Tok, Token};
use super::literal::parse_immediate;
use super::parse::ParseError;

/// The tokens and the position of the next one.
pub(crate) struct Cursor {
    tokens: Vec<Token>,
    pos: usize,
}

/// The end-of-text token a cursor past its end sees.
const EOF: Token = Token {
    tok: Tok::Eof,
    line: 0,
};

impl Cursor {
    /// A cursor at the first token; `tokens` ends with [`Tok::Eof`].
    pub fn new(tokens: Vec<Token>) -> Self {
        Cursor { tokens, pos: 0 }
    }

    /// The token `k` places ahead of the next one.
    pub fn peek_at(&self, k: usize) -> &Token {
        self.tokens
            .get(self.pos + k)
            .or(self.tokens.last())
            .unwrap_or(&EOF)
    }

    /// The next token.
    pub fn peek(&self) -> &Token {
        self.peek_at(0)
    }

    /// The next token's line.
    pub fn line(&self) -> u32 {
        self.peek().line
    }

    /// Takes the next token (at the end, the end-of-text token again).
    pub fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    /// An error at the next token: "expected `what`, found ...".
    pub fn expected<T>(&self, what: &str) -> Result<T, ParseError> {
        Err(ParseError {
            line: self.line(),
            message: format!("expected {what}, found {}", self.peek().describe()),
        })
    }

    /// Whether the next token is the punctuation `c`.
    pub fn is_punct(&self, c: char) -> bool {
        self.peek().tok == Tok::Punct(c)
    }

    /// Takes the punctuation `c` if it is next.
    pub fn eat_punct(&mut self, c: char) -> bool {
        let hit = self.is_punct(c);
        if hit {
            self.bump();
        }
        hit
    }

    /// Takes the word `w` if it is next.
    pub fn eat_word(&mut self, w: &str) -> bool {
        let hit = matches!(&self.peek().tok, Tok::Word(x) if x == w);
        if hit {
            self.bump();
        }
        hit
    }

    /// Takes the punctuation `c`, which must be next (`context` says where).
    pub fn expect_punct(&mut self, c: char, context: &str) -> Result<(), ParseError> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            self.expected(&format!("`{c}` {context}"))
        }
    }

    /// Takes a word, which must be next (`what` says which).
    pub fn expect_word(&mut self, what: &str) -> Result<String, ParseError> {
        match &self.peek().tok {
            Tok::Word(w) => {
                let w = w.clone();
                self.bump();
                Ok(w)
            }
            _ => self.expected(what),
        }
    }

    /// Takes a name: a word that is not a directive (does not start with `.`).
    pub fn expect_name(&mut self, what: &str) -> Result<String, ParseError> {
        match &self.peek().tok {
            Tok::Word(w) if !w.starts_with('.') => {
                let w = w.clone();
                self.bump();
                Ok(w)
            }
            _ => self.expected(what),
        }
    }

    /// Takes a numeric literal with an optional leading `-`.
    pub fn expect_immediate(&mut self, what: &str) -> Result<Immediate, ParseError> {
        let negative = self.is_punct('-') && matches!(self.peek_at(1).tok, Tok::Number(_));
        if negative {
            self.bump();
        }
        match &self.peek().tok {
            Tok::Number(text) => {
                let line = self.line();
                let value = parse_immediate(text, negative)
                    .map_err(|message| ParseError { line, message })?;
                self.bump();
                Ok(value)
            }
            _ => self.expected(what),
        }
    }

    /// Takes an integer literal that must lie in `0..=max`.
    pub fn expect_uint(&mut self, what: &str, max: u64) -> Result<u64, ParseError> {
        let line = self.line();
        match self.expect_immediate(what)? {
            Immediate::Int(v) if v >= 0 && (v as u64) <= max => Ok(v as u64),
            Immediate::Int(v) => Err(ParseError {
                line,
                message: format!("{what} must lie in 0..={max}, found {v}"),
            }),
            other => Err(ParseError {
                line,
                message: format!("expected {what} (an integer), found {other:?}"),
            }),
        }
    }

    /// Skips the rest of the line the previous token was on (`.loc`, `.file`).
    pub fn skip_line(&mut self, line: u32) {
        while self.peek().tok != Tok::Eof && self.line() == line {
            self.bump();
        }
    }

    /// Skips tokens up to and including the next `;` (`.pragma`).
    pub fn skip_statement(&mut self, directive: &str, line: u32) -> Result<(), ParseError> {
        loop {
            match self.bump().tok {
                Tok::Punct(';') => return Ok(()),
                Tok::Eof => {
                    return Err(ParseError {
                        line,
                        message: format!("`{directive}` is not ended by `;`"),
                    })
                }
                _ => {}
            }
        }
    }

    /// Skips a `{ ... }` block with nested braces (a debug `.section`).
    pub fn skip_block(&mut self, what: &str) -> Result<(), ParseError> {
        let line = self.line();
        self.expect_punct('{', &format!("opening {what}"))?;
        let mut depth = 1usize;
        loop {
            match self.bump().tok {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                Tok::Eof => {
                    return Err(ParseError {
                        line,
                        message: format!("{what} is not closed by `}}`"),
                    })
                }
                _ => {}
            }
        }
    }
}
