//! Function bodies: declarations, labels, instructions and their operands,
//! with inner scopes resolved (see [`super::scope`]).

use super::ast::{Immediate, Instruction, Operand, RegisterDecl, Statement, Variable};
use super::cursor::Cursor;
use super::lex::Tok;
use super::literal::type_size;
use super::parse::{error, parse_variable, space_of, ParseError, VarContext};
use super::scope::Scopes;

/// What a body declares and holds, names already resolved.
pub(crate) struct Body {
    /// Every `.reg` declaration, inner scopes included.
    pub registers: Vec<RegisterDecl>,
    /// Every variable declaration, inner scopes included.
    pub locals: Vec<Variable>,
    /// Labels and instructions.
    pub statements: Vec<Statement>,
}

/// The deepest nesting of `{ ... }` scopes and of operands a body may have.
const MAX_DEPTH: usize = 64;

/// Parses `{ ... }` (the cursor is on the `{`) for the function `name`.
pub(crate) fn parse_body(cur: &mut Cursor, name: &str) -> Result<Body, ParseError> {
    let open_line = cur.line();
    cur.expect_punct('{', &format!("opening the body of `{name}`"))?;
    let mut scopes = Scopes::new();
    let mut stack = vec![0usize];
    let mut registers = Vec::new();
    let mut locals = Vec::new();
    let mut statements: Vec<(usize, Statement)> = Vec::new();
    loop {
        let scope = stack.last().copied().unwrap_or(0);
        let line = cur.line();
        match cur.peek().tok.clone() {
            Tok::Eof => {
                return Err(error(
                    open_line,
                    &format!("the body of `{name}` is not closed by `}}`"),
                ))
            }
            Tok::Punct('{') => {
                cur.bump();
                if stack.len() > MAX_DEPTH {
                    return Err(error(line, "the `{ }` scopes nest too deep"));
                }
                stack.push(scopes.open(scope));
            }
            Tok::Punct('}') => {
                cur.bump();
                stack.pop();
                if stack.is_empty() {
                    break;
                }
            }
            Tok::Punct('@') => {
                statements.push((scope, Statement::Instruction(parse_instruction(cur)?)));
            }
            Tok::Word(w) if w == ".reg" => {
                cur.bump();
                for decl in parse_registers(cur, scope)? {
                    scopes.declare_register(scope, &decl.name, decl.count);
                    registers.push(decl);
                }
            }
            Tok::Word(w) if w == ".pragma" => {
                cur.bump();
                cur.skip_statement(".pragma", line)?;
            }
            Tok::Word(w) if w == ".loc" || w == ".file" => {
                cur.bump();
                cur.skip_line(line);
            }
            Tok::Word(w) if w.starts_with('.') => {
                cur.bump();
                let (space, is_extern) = if w == ".extern" {
                    let space_line = cur.line();
                    let word = cur.expect_word("a state space after `.extern`")?;
                    match space_of(&word) {
                        Some(s) => (s, true),
                        None => {
                            return Err(error(
                                space_line,
                                &format!("expected a state space after `.extern`, found `{word}`"),
                            ))
                        }
                    }
                } else {
                    match space_of(&w) {
                        Some(s) => (s, false),
                        None => {
                            return Err(error(
                                line,
                                &format!("the directive `{w}` is not supported in a function body"),
                            ))
                        }
                    }
                };
                let mut v = parse_variable(cur, space, is_extern, line, VarContext::Statement)?;
                scopes.declare_other(scope, &v.name);
                v.name.push_str(&Scopes::suffix(scope));
                locals.push(v);
            }
            Tok::Word(w) if cur.peek_at(1).tok == Tok::Punct(':') => {
                cur.bump();
                cur.bump();
                scopes.declare_other(scope, &w);
                statements.push((
                    scope,
                    Statement::Label(format!("{w}{}", Scopes::suffix(scope))),
                ));
            }
            Tok::Word(_) => {
                statements.push((scope, Statement::Instruction(parse_instruction(cur)?)));
            }
            _ => return cur.expected("an instruction, a label, a declaration, `{` or `}`"),
        }
    }
    let statements = statements
        .into_iter()
        .map(|(scope, statement)| match statement {
            Statement::Instruction(mut ins) => {
                if let Some((_, pred)) = &mut ins.guard {
                    *pred = scopes.resolve(scope, pred).0;
                }
                for op in &mut ins.operands {
                    scopes.rename(scope, op);
                }
                Statement::Instruction(ins)
            }
            label => label,
        })
        .collect();
    Ok(Body {
        registers,
        locals,
        statements,
    })
}

/// `.type name[<count>] {, name[<count>]} ;` after `.reg`, in `scope`.
fn parse_registers(cur: &mut Cursor, scope: usize) -> Result<Vec<RegisterDecl>, ParseError> {
    let line = cur.line();
    let word = cur.expect_word("the register type after `.reg`")?;
    let ty = match word.strip_prefix('.') {
        Some(t) if type_size(t).is_some() => t.to_string(),
        _ if word.starts_with(".v") => {
            return Err(error(
                line,
                &format!("vector registers (`.reg {word}`) are not supported"),
            ))
        }
        _ => {
            return Err(error(
                line,
                &format!(
                    "expected the register type after `.reg` (such as `.b32`), found `{word}`"
                ),
            ))
        }
    };
    let mut decls = Vec::new();
    loop {
        let decl_line = cur.line();
        let name = cur.expect_name("a register name")?;
        let count = if cur.eat_punct('<') {
            let n = cur.expect_uint("the register count", u32::MAX.into())? as u32;
            cur.expect_punct('>', "closing the register count")?;
            Some(n)
        } else {
            None
        };
        decls.push(RegisterDecl {
            ty: ty.clone(),
            name,
            count,
            scope_suffix: Scopes::suffix(scope),
            line: decl_line,
        });
        if cur.eat_punct(';') {
            return Ok(decls);
        }
        cur.expect_punct(',', "or `;` after the register name")?;
    }
}

/// `[@[!]pred] opcode [operand {, operand}] ;` (names not yet resolved).
fn parse_instruction(cur: &mut Cursor) -> Result<Instruction, ParseError> {
    let line = cur.line();
    let guard = if cur.eat_punct('@') {
        let negated = cur.eat_punct('!');
        let pred = cur.expect_name("a predicate register after `@`")?;
        Some((negated, pred))
    } else {
        None
    };
    let op_line = cur.line();
    let opcode_text = cur.expect_name("an instruction's opcode")?;
    if opcode_text.starts_with('%') {
        return Err(error(
            op_line,
            &format!("expected an instruction's opcode, found the register `{opcode_text}`"),
        ));
    }
    let opcode: Vec<String> = opcode_text.split('.').map(str::to_string).collect();
    if opcode.iter().any(String::is_empty) {
        return Err(error(
            op_line,
            &format!("the opcode `{opcode_text}` has an empty part"),
        ));
    }
    let mut operands = Vec::new();
    if !cur.eat_punct(';') {
        loop {
            operands.push(parse_operand(cur, 0)?);
            if cur.eat_punct(';') {
                break;
            }
            cur.expect_punct(',', &format!("or `;` after an operand of `{opcode_text}`"))?;
        }
    }
    Ok(Instruction {
        guard,
        opcode,
        operands,
        line,
    })
}

/// One operand, with `a|b` pairs.
fn parse_operand(cur: &mut Cursor, depth: usize) -> Result<Operand, ParseError> {
    if depth > MAX_DEPTH {
        return Err(error(cur.line(), "the operand nests too deep"));
    }
    let first = parse_primary(cur, depth)?;
    if cur.eat_punct('|') {
        let second = parse_primary(cur, depth)?;
        return Ok(Operand::Pair(Box::new(first), Box::new(second)));
    }
    Ok(first)
}

/// `open a, b, ... close` (possibly empty when `allow_empty`).
fn parse_items(
    cur: &mut Cursor,
    close: char,
    what: &str,
    allow_empty: bool,
    depth: usize,
) -> Result<Vec<Operand>, ParseError> {
    let mut items = Vec::new();
    if cur.is_punct(close) {
        if !allow_empty {
            return cur.expected(&format!("an operand in the {what}"));
        }
        cur.bump();
        return Ok(items);
    }
    loop {
        items.push(parse_operand(cur, depth + 1)?);
        if cur.eat_punct(close) {
            return Ok(items);
        }
        cur.expect_punct(',', &format!("or `{close}` in the {what}"))?;
    }
}

/// An operand without a `|`.
fn parse_primary(cur: &mut Cursor, depth: usize) -> Result<Operand, ParseError> {
    let line = cur.line();
    match cur.peek().tok.clone() {
        Tok::Word(w) if w == "_" => {
            cur.bump();
            Ok(Operand::Sink)
        }
        Tok::Word(w) if w.starts_with('%') => {
            cur.bump();
            Ok(Operand::Register(w))
        }
        Tok::Word(w) if !w.starts_with('.') => {
            cur.bump();
            Ok(Operand::Symbol(w))
        }
        Tok::Punct('!') => {
            cur.bump();
            let name = cur.expect_name("a predicate register after `!`")?;
            Ok(Operand::NotRegister(name))
        }
        Tok::Punct('-') | Tok::Number(_) => {
            Ok(Operand::Immediate(cur.expect_immediate("a number")?))
        }
        Tok::Punct('[') => {
            cur.bump();
            parse_address(cur, line)
        }
        Tok::Punct('{') => {
            cur.bump();
            Ok(Operand::Vector(parse_items(
                cur, '}', "vector", false, depth,
            )?))
        }
        Tok::Punct('(') => {
            cur.bump();
            Ok(Operand::List(parse_items(cur, ')', "list", true, depth)?))
        }
        _ => cur.expected("an operand"),
    }
}

/// `[base]`, `[base+off]`, `[base+-off]`, `[base-off]`, `[off]` after the `[`.
fn parse_address(cur: &mut Cursor, line: u32) -> Result<Operand, ParseError> {
    let base = match cur.peek().tok.clone() {
        Tok::Word(w) if !w.starts_with('.') => {
            cur.bump();
            Some(Box::new(if w.starts_with('%') {
                Operand::Register(w)
            } else {
                Operand::Symbol(w)
            }))
        }
        _ => None,
    };
    let mut offset = 0i64;
    let mut first = base.is_none();
    loop {
        if cur.eat_punct(']') {
            if first {
                return Err(error(line, "an empty address `[]`"));
            }
            return Ok(Operand::Address { base, offset });
        }
        let negative = if first || cur.eat_punct('+') {
            false
        } else if cur.eat_punct('-') {
            true
        } else {
            return cur.expected("`+`, `-` or `]` in the address");
        };
        let term_line = cur.line();
        let value = match cur.expect_immediate("an integer offset in the address")? {
            Immediate::Int(v) => v,
            other => {
                return Err(error(
                    term_line,
                    &format!("an address offset must be an integer, found {other:?}"),
                ))
            }
        };
        offset = if negative {
            offset.wrapping_sub(value)
        } else {
            offset.wrapping_add(value)
        };
        first = false;
    }
}
