//! The PTX lexer: text to tokens with their 1-based lines, comments dropped.

use super::parse::ParseError;

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A name, a directive or an opcode: starts with a letter, `_`, `$`, `%`
    /// or `.`, and goes on with letters, digits, `_`, `$` and `.`
    /// (`ld.global.u32`, `%tid.x`, `.reg`, `$L__BB0_1`).
    Word(String),
    /// A numeric literal as written, without a sign (`42`, `0x1F`, `0f3F800000`, `1.5e-3`).
    Number(String),
    /// A double-quoted string, without its quotes.
    Str(String),
    /// Any other single character (`,`, `;`, `{`, `[`, `+`, ...).
    Punct(char),
    /// The end of the text.
    Eof,
}

/// A token and the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    /// What it is.
    pub tok: Tok,
    /// The 1-based line.
    pub line: u32,
}

impl Token {
    /// How an error message names this token.
    pub fn describe(&self) -> String {
        match &self.tok {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Number(n) => format!("the number `{n}`"),
            Tok::Str(s) => format!("the string \"{s}\""),
            Tok::Punct(c) => format!("`{c}`"),
            Tok::Eof => "the end of the text".into(),
        }
    }
}

fn starts_word(c: char) -> bool {
    c.is_ascii_alphabetic() || matches!(c, '_' | '$' | '%' | '.')
}

fn continues_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.')
}

/// Whether a number so far is decimal (so that `e` starts an exponent that
/// may be signed), not one with a `0x`, `0b`, `0f` or `0d` prefix.
fn is_decimal_prefix(text: &str) -> bool {
    let b = text.as_bytes();
    !(b.len() >= 2
        && b[0] == b'0'
        && matches!(b[1], b'x' | b'X' | b'b' | b'B' | b'f' | b'F' | b'd' | b'D'))
}

/// Splits a PTX text into tokens; the last one is always [`Tok::Eof`].
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1u32;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            let start = line;
            i += 2;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ParseError {
                            line: start,
                            message: "a `/*` comment is not closed by `*/`".into(),
                        })
                    }
                    Some('*') if chars.get(i + 1) == Some(&'/') => {
                        i += 2;
                        break;
                    }
                    Some('\n') => {
                        line += 1;
                        i += 1;
                    }
                    Some(_) => i += 1,
                }
            }
        } else if c == '"' {
            let start = line;
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None | Some('\n') => {
                        return Err(ParseError {
                            line: start,
                            message: "a string is not closed by `\"` on its line".into(),
                        })
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some('\\') if i + 1 < chars.len() && chars[i + 1] != '\n' => {
                        s.push(chars[i]);
                        s.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            tokens.push(Token {
                tok: Tok::Str(s),
                line: start,
            });
        } else if c.is_ascii_digit() {
            let mut s = String::new();
            while let Some(&ch) = chars.get(i) {
                let signed_exponent = matches!(ch, '+' | '-')
                    && matches!(s.chars().last(), Some('e' | 'E'))
                    && is_decimal_prefix(&s);
                if continues_word(ch) || signed_exponent {
                    s.push(ch);
                    i += 1;
                } else {
                    break;
                }
            }
            tokens.push(Token {
                tok: Tok::Number(s),
                line,
            });
        } else if starts_word(c) {
            let mut s = String::from(c);
            i += 1;
            while let Some(&ch) = chars.get(i) {
                if continues_word(ch) {
                    s.push(ch);
                    i += 1;
                } else {
                    break;
                }
            }
            tokens.push(Token {
                tok: Tok::Word(s),
                line,
            });
        } else {
            tokens.push(Token {
                tok: Tok::Punct(c),
                line,
            });
            i += 1;
        }
    }
    tokens.push(Token {
        tok: Tok::Eof,
        line,
    });
    Ok(tokens)
}
