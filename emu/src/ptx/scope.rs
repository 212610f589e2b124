//! The scopes of a function body (`{ ... }` blocks) and the renaming of
//! names declared in inner ones: `name` declared in scope N is `name@N`.

use std::collections::HashSet;

use super::ast::Operand;

/// What a name in a scope stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A register.
    Register,
    /// A variable or a label.
    Other,
}

/// One `{ ... }` block: its parent and what it declares.
#[derive(Debug, Default)]
struct Scope {
    parent: usize,
    /// `.reg` declarations: the name, or the prefix with the count of `name<count>`.
    registers: Vec<(String, Option<u32>)>,
    /// Variables and labels.
    others: HashSet<String>,
}

/// The scope tree of one function: scope 0 is the body itself.
#[derive(Debug)]
pub(crate) struct Scopes {
    scopes: Vec<Scope>,
}

/// Whether `name` is one of `prefix0 .. prefix{count-1}`.
fn in_range(name: &str, prefix: &str, count: u32) -> bool {
    match name.strip_prefix(prefix) {
        Some(digits)
            if !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0')) =>
        {
            digits.parse::<u32>().is_ok_and(|n| n < count)
        }
        _ => false,
    }
}

impl Scopes {
    /// A tree with only the function's scope.
    pub fn new() -> Self {
        Scopes {
            scopes: vec![Scope::default()],
        }
    }

    /// Opens a scope inside `parent`; returns its number.
    pub fn open(&mut self, parent: usize) -> usize {
        self.scopes.push(Scope {
            parent,
            ..Scope::default()
        });
        self.scopes.len() - 1
    }

    /// The suffix names declared in `scope` take (`""` for scope 0).
    pub fn suffix(scope: usize) -> String {
        if scope == 0 {
            String::new()
        } else {
            format!("@{scope}")
        }
    }

    /// Records a `.reg` declaration in `scope`.
    pub fn declare_register(&mut self, scope: usize, name: &str, count: Option<u32>) {
        if let Some(s) = self.scopes.get_mut(scope) {
            s.registers.push((name.to_string(), count));
        }
    }

    /// Records a variable or label in `scope`.
    pub fn declare_other(&mut self, scope: usize, name: &str) {
        if let Some(s) = self.scopes.get_mut(scope) {
            s.others.insert(name.to_string());
        }
    }

    /// The innermost scope from `scope` outwards that declares `name`, and what it is.
    fn lookup(&self, mut scope: usize, name: &str) -> Option<(usize, Kind)> {
        loop {
            let s = self.scopes.get(scope)?;
            let is_register = s.registers.iter().any(|(n, count)| match count {
                None => n == name,
                Some(c) => in_range(name, n, *c),
            });
            if is_register {
                return Some((scope, Kind::Register));
            }
            if s.others.contains(name) {
                return Some((scope, Kind::Other));
            }
            if scope == 0 {
                return None;
            }
            scope = s.parent;
        }
    }

    /// `name` as seen from `scope`: renamed when an inner scope declares
    /// it, with what it stands for when it is declared at all.
    pub fn resolve(&self, scope: usize, name: &str) -> (String, Option<Kind>) {
        match self.lookup(scope, name) {
            Some((found, kind)) => (format!("{name}{}", Self::suffix(found)), Some(kind)),
            None => (name.to_string(), None),
        }
    }

    /// Renames every name in an operand as seen from `scope`; a symbol that
    /// names a register (one declared without `%`) becomes a register.
    pub fn rename(&self, scope: usize, operand: &mut Operand) {
        match operand {
            Operand::Register(name) | Operand::NotRegister(name) => {
                *name = self.resolve(scope, name).0;
            }
            Operand::Symbol(name) => {
                let (renamed, kind) = self.resolve(scope, name);
                *operand = if kind == Some(Kind::Register) {
                    Operand::Register(renamed)
                } else {
                    Operand::Symbol(renamed)
                };
            }
            Operand::Address { base, .. } => {
                if let Some(b) = base {
                    self.rename(scope, b);
                }
            }
            Operand::Vector(items) | Operand::List(items) => {
                for item in items {
                    self.rename(scope, item);
                }
            }
            Operand::Pair(a, b) => {
                self.rename(scope, a);
                self.rename(scope, b);
            }
            Operand::Immediate(_) | Operand::Sink => {}
        }
    }
}
