//! PTX text: the syntax tree ([`ast`]) and the parser ([`parse`]).

pub mod ast;
mod body;
mod cursor;
mod lex;
mod literal;
pub mod parse;
mod scope;

pub use parse::{parse_module, ParseError};
