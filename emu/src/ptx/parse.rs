//! The PTX parser: text to [`super::ast::Module`].
//!
//! Module level and declarations live here; function bodies (statements,
//! operands, scopes) in [`super::body`].

use std::fmt;

use super::ast::{Directives, Function, Immediate, Module, Space, Variable};
use super::body::parse_body;
use super::cursor::Cursor;
use super::lex::{tokenize, Tok};
use super::literal::{convert_init, type_size};

/// A PTX text that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The 1-based line.
    pub line: u32,
    /// What was expected and what was found.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PTX line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses a whole PTX module.
pub fn parse_module(text: &str) -> Result<Module, ParseError> {
    let mut cur = Cursor::new(tokenize(text)?);
    let mut version = None;
    let mut target = None;
    let mut address_size = None;
    let mut variables = Vec::new();
    let mut functions = Vec::new();
    loop {
        let line = cur.line();
        let word = match &cur.peek().tok {
            Tok::Eof => break,
            Tok::Word(w) if w.starts_with('.') => w.clone(),
            _ => return cur.expected("a directive (`.version`, `.entry`, `.global`, ...)"),
        };
        match word.as_str() {
            ".version" => {
                cur.bump();
                if version.is_some() {
                    return Err(error(line, "`.version` is given twice"));
                }
                match &cur.peek().tok {
                    Tok::Number(n) if n.contains('.') => version = Some(n.clone()),
                    _ => return cur.expected("a version such as `9.0` after `.version`"),
                }
                cur.bump();
            }
            ".target" => {
                cur.bump();
                if target.is_some() {
                    return Err(error(line, "`.target` is given twice"));
                }
                let mut names = vec![cur.expect_name("a target name such as `sm_80`")?];
                while cur.eat_punct(',') {
                    names.push(cur.expect_name("a target name after `,`")?);
                }
                target = Some(names);
            }
            ".address_size" => {
                cur.bump();
                let size = cur.expect_uint("the address size", 64)? as u32;
                if size != 32 && size != 64 {
                    return Err(error(
                        line,
                        &format!("`.address_size` is 32 or 64, not {size}"),
                    ));
                }
                address_size = Some(size);
            }
            ".file" | ".loc" => {
                cur.bump();
                cur.skip_line(line);
            }
            ".pragma" => {
                cur.bump();
                cur.skip_statement(".pragma", line)?;
            }
            ".section" => {
                cur.bump();
                cur.expect_word("a section name after `.section`")?;
                cur.skip_block("the `.section` body")?;
            }
            _ => {
                if version.is_none() {
                    return Err(error(
                        line,
                        &format!("expected `.version` before {}", cur.peek().describe()),
                    ));
                }
                if target.is_none() {
                    return Err(error(
                        line,
                        &format!("expected `.target` before {}", cur.peek().describe()),
                    ));
                }
                match parse_declaration(&mut cur)? {
                    Declaration::Variable(v) => variables.push(v),
                    Declaration::Function(Some(f)) => functions.push(f),
                    Declaration::Function(None) => {}
                }
            }
        }
    }
    let Some(version) = version else {
        return Err(error(1, "the module has no `.version`"));
    };
    let Some(target) = target else {
        return Err(error(1, "the module has no `.target`"));
    };
    Ok(Module {
        version,
        target,
        address_size: address_size.unwrap_or(64),
        variables,
        functions,
    })
}

/// A [`ParseError`] at `line`.
pub(crate) fn error(line: u32, message: &str) -> ParseError {
    ParseError {
        line,
        message: message.to_string(),
    }
}

/// A module-level declaration.
enum Declaration {
    /// A module-scope variable.
    Variable(Variable),
    /// A function; `None` for a prototype (no body).
    Function(Option<Function>),
}

const LINKAGE: [&str; 4] = [".visible", ".weak", ".extern", ".common"];

/// The state space a directive names, if it names one.
pub(crate) fn space_of(word: &str) -> Option<Space> {
    Some(match word {
        ".global" => Space::Global,
        ".shared" => Space::Shared,
        ".const" => Space::Const,
        ".local" => Space::Local,
        ".param" => Space::Param,
        _ => return None,
    })
}

/// `[linkage] .entry|.func ...` or `[linkage] .space ...`.
fn parse_declaration(cur: &mut Cursor) -> Result<Declaration, ParseError> {
    let mut linkage = Vec::new();
    while let Tok::Word(w) = &cur.peek().tok {
        if !LINKAGE.contains(&w.as_str()) {
            break;
        }
        linkage.push(w[1..].to_string());
        cur.bump();
    }
    let line = cur.line();
    let word =
        cur.expect_word("`.entry`, `.func` or a state space (`.global`, `.shared`, `.const`)")?;
    match word.as_str() {
        ".entry" => parse_function(cur, true, linkage).map(Declaration::Function),
        ".func" => parse_function(cur, false, linkage).map(Declaration::Function),
        ".global" | ".shared" | ".const" => {
            let space = space_of(&word).unwrap_or(Space::Global);
            let is_extern = linkage.iter().any(|l| l == "extern");
            let v = parse_variable(cur, space, is_extern, line, VarContext::Statement)?;
            Ok(Declaration::Variable(v))
        }
        _ => Err(error(
            line,
            &format!(
                "expected `.entry`, `.func`, `.global`, `.shared` or `.const`, found `{word}`"
            ),
        )),
    }
}

/// Where a variable declaration stands, which decides what may follow it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarContext {
    /// A statement: may have an initialiser, ends with `;`.
    Statement,
    /// A function parameter: may carry `.ptr`, ends before `,` or `)`.
    Parameter,
}

/// The rest of a variable declaration after its state space:
/// `[.align N] [.vN] .type [.ptr [.space] [.align N]] name[dims]... [= init] [;]`
/// (`.ptr` only on parameters).
pub(crate) fn parse_variable(
    cur: &mut Cursor,
    space: Space,
    is_extern: bool,
    line: u32,
    context: VarContext,
) -> Result<Variable, ParseError> {
    let mut align = None;
    let mut vector = 1u64;
    let ty = loop {
        let attr_line = cur.line();
        let word = cur.expect_word("the variable's type (such as `.u32`)")?;
        match word.as_str() {
            ".align" => {
                let n = cur.expect_uint("the alignment after `.align`", u32::MAX.into())? as u32;
                if !n.is_power_of_two() {
                    return Err(error(
                        attr_line,
                        &format!("`.align {n}` is not a power of two"),
                    ));
                }
                align = Some(n);
            }
            ".v2" | ".v4" | ".v8" => vector = word[2..].parse().unwrap_or(1),
            ".attribute" => {
                return Err(error(
                    attr_line,
                    "variable attributes (`.attribute(...)`, such as `.managed`) are not supported",
                ))
            }
            _ => match word.strip_prefix('.') {
                Some(t) if type_size(t).is_some() && t != "pred" => break t.to_string(),
                _ => {
                    return Err(error(
                        attr_line,
                        &format!("expected the variable's type (such as `.u32`), found `{word}`"),
                    ))
                }
            },
        }
    };
    if context == VarContext::Parameter && cur.eat_word(".ptr") {
        if let Tok::Word(w) = &cur.peek().tok {
            if matches!(w.as_str(), ".global" | ".shared" | ".const" | ".local") {
                cur.bump();
            }
        }
        if cur.eat_word(".align") {
            let align_line = cur.line();
            let n = cur.expect_uint("the alignment after `.align`", u32::MAX.into())? as u32;
            if !n.is_power_of_two() {
                return Err(error(
                    align_line,
                    &format!("`.align {n}` is not a power of two"),
                ));
            }
            align = Some(n);
        }
    }
    let elem = type_size(&ty).unwrap_or(1);
    let name = cur.expect_name("the variable's name")?;
    let mut dims: Option<u64> = None;
    while cur.eat_punct('[') {
        let len = if cur.is_punct(']') {
            0
        } else {
            cur.expect_uint("an array length", u64::MAX >> 1)?
        };
        cur.expect_punct(']', "closing the array length")?;
        dims = Some(match dims {
            None => len,
            Some(d) => d
                .checked_mul(len)
                .ok_or_else(|| error(line, "the array's size overflows 64 bits"))?,
        });
    }
    let mut array_len = match (vector, dims) {
        (1, d) => d,
        (n, d) => Some(
            d.unwrap_or(1)
                .checked_mul(n)
                .ok_or_else(|| error(line, "the array's size overflows 64 bits"))?,
        ),
    };
    let mut init = None;
    if context == VarContext::Statement {
        if cur.eat_punct('=') {
            let mut values = Vec::new();
            parse_init(cur, &ty, &mut values, 0)?;
            match array_len {
                Some(0) => array_len = Some(values.len() as u64),
                Some(n) if values.len() as u64 > n => {
                    return Err(error(
                        line,
                        &format!(
                            "`{name}` has {n} elements but {} initialisers",
                            values.len()
                        ),
                    ))
                }
                None if values.len() > 1 => {
                    return Err(error(
                        line,
                        &format!("the scalar `{name}` has {} initialisers", values.len()),
                    ))
                }
                _ => {}
            }
            init = Some(values);
        }
        cur.expect_punct(';', &format!("ending the declaration of `{name}`"))?;
    }
    Ok(Variable {
        space,
        is_extern,
        align: align.unwrap_or(elem * vector as u32),
        ty,
        name,
        array_len,
        init,
        line,
    })
}

/// The deepest nesting of braces an initialiser may have.
const MAX_INIT_DEPTH: usize = 16;

/// An initialiser: a value or `{ ... }` of initialisers, flattened into `out`.
fn parse_init(
    cur: &mut Cursor,
    ty: &str,
    out: &mut Vec<Immediate>,
    depth: usize,
) -> Result<(), ParseError> {
    let line = cur.line();
    if cur.eat_punct('{') {
        if depth >= MAX_INIT_DEPTH {
            return Err(error(line, "the initialiser's braces nest too deep"));
        }
        loop {
            parse_init(cur, ty, out, depth + 1)?;
            if cur.eat_punct('}') {
                return Ok(());
            }
            cur.expect_punct(',', "or `}` in the initialiser")?;
        }
    }
    let value = cur.expect_immediate("a numeric initialiser")?;
    out.push(convert_init(value, ty).map_err(|m| error(line, &m))?);
    Ok(())
}

/// `( .param ... , ... )`: a parameter list.
fn parse_params(cur: &mut Cursor, what: &str) -> Result<Vec<Variable>, ParseError> {
    cur.expect_punct('(', &format!("opening the {what}"))?;
    let mut params = Vec::new();
    if cur.eat_punct(')') {
        return Ok(params);
    }
    loop {
        let line = cur.line();
        let word = cur.expect_word("`.param`")?;
        match word.as_str() {
            ".param" => {}
            ".reg" => {
                return Err(error(
                    line,
                    "`.reg` parameters are not supported (only `.param` ones)",
                ))
            }
            _ => return Err(error(line, &format!("expected `.param`, found `{word}`"))),
        }
        params.push(parse_variable(
            cur,
            Space::Param,
            false,
            line,
            VarContext::Parameter,
        )?);
        if cur.eat_punct(')') {
            return Ok(params);
        }
        cur.expect_punct(',', &format!("or `)` in the {what}"))?;
    }
}

/// `.maxntid x[, y[, z]]` and `.reqntid`: missing dims are 1.
fn parse_dims(cur: &mut Cursor, what: &str) -> Result<[u32; 3], ParseError> {
    let mut dims = [1u32; 3];
    for (i, d) in dims.iter_mut().enumerate() {
        if i > 0 && !cur.eat_punct(',') {
            break;
        }
        *d = cur.expect_uint(what, u32::MAX.into())? as u32;
    }
    Ok(dims)
}

/// The performance directives between a signature and its body.
fn parse_directives(cur: &mut Cursor) -> Result<Directives, ParseError> {
    let mut d = Directives::default();
    loop {
        let line = cur.line();
        let Tok::Word(word) = &cur.peek().tok else {
            return Ok(d);
        };
        let word = word.clone();
        let twice = || error(line, &format!("`{word}` is given twice"));
        match word.as_str() {
            ".maxntid" => {
                cur.bump();
                if d.maxntid.is_some() {
                    return Err(twice());
                }
                d.maxntid = Some(parse_dims(cur, "a thread count after `.maxntid`")?);
            }
            ".reqntid" => {
                cur.bump();
                if d.reqntid.is_some() {
                    return Err(twice());
                }
                d.reqntid = Some(parse_dims(cur, "a thread count after `.reqntid`")?);
            }
            ".minnctapersm" => {
                cur.bump();
                if d.minnctapersm.is_some() {
                    return Err(twice());
                }
                d.minnctapersm = Some(
                    cur.expect_uint("a CTA count after `.minnctapersm`", u32::MAX.into())? as u32,
                );
            }
            ".maxnreg" => {
                cur.bump();
                if d.maxnreg.is_some() {
                    return Err(twice());
                }
                d.maxnreg = Some(
                    cur.expect_uint("a register count after `.maxnreg`", u32::MAX.into())? as u32,
                );
            }
            ".pragma" => {
                cur.bump();
                cur.skip_statement(".pragma", line)?;
            }
            _ if word.starts_with('.') => {
                return Err(error(
                    line,
                    &format!("the function directive `{word}` is not supported"),
                ))
            }
            _ => return Ok(d),
        }
    }
}

/// `.entry name(params) directives { body }` or
/// `.func [(returns)] name[(params)] directives ({ body } | ;)`, after the
/// `.entry` / `.func`.
fn parse_function(
    cur: &mut Cursor,
    is_entry: bool,
    linkage: Vec<String>,
) -> Result<Option<Function>, ParseError> {
    let returns = if !is_entry && cur.is_punct('(') {
        parse_params(cur, "return parameters")?
    } else {
        Vec::new()
    };
    let line = cur.line();
    let name = cur.expect_name("the function's name")?;
    let params = if cur.is_punct('(') {
        parse_params(cur, &format!("parameters of `{name}`"))?
    } else if is_entry {
        return cur.expected(&format!("`(` opening the parameters of `{name}`"));
    } else {
        Vec::new()
    };
    let directives = parse_directives(cur)?;
    if cur.eat_punct(';') {
        return Ok(None);
    }
    if !cur.is_punct('{') {
        return cur.expected(&format!("`{{` opening the body of `{name}`, or `;`"));
    }
    let body = parse_body(cur, &name)?;
    Ok(Some(Function {
        is_entry,
        linkage,
        name,
        returns,
        params,
        directives,
        registers: body.registers,
        locals: body.locals,
        body: body.statements,
        line,
    }))
}
