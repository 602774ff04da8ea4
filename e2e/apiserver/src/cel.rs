//! A tiny CEL evaluator for `x-kubernetes-validations` rules.
//!
//! Supported subset (anything else fails to compile and the rule is skipped with a warning):
//! literals (int, uint, double, string, bytes-free, bool, null, lists, maps), `self`, `oldSelf`,
//! field selection `a.b`, indexing `a[0]` / `a['k']`, `has(a.b)`, `size(x)` / `x.size()`,
//! `!`, unary `-`, `* / %`, `+ -`, `< <= > >= == !=`, `in`, `&&`, `||` (with CEL's error absorption),
//! `c ? a : b`, the string functions `startsWith`, `endsWith`, `contains`, `matches`,
//! `lowerAscii`, `upperAscii`, conversions `int()`, `string()`, `double()`, and the macros
//! `all`, `exists`, `exists_one`, `map`, `filter`.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
    Punct(&'static str),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    const PUNCTS: &[&str] = &[
        "&&", "||", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ".", ",", "?", ":", "!",
        "-", "+", "*", "/", "%", "<", ">",
    ];
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            let mut is_double = false;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || chars[i] == '.'
                    || chars[i] == 'e'
                    || chars[i] == 'E')
            {
                if chars[i] == '.' {
                    // `1.size()` is not a double; only treat '.' as a decimal point before a digit.
                    if !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                        break;
                    }
                    is_double = true;
                }
                if chars[i] == 'e' || chars[i] == 'E' {
                    is_double = true;
                    if matches!(chars.get(i + 1), Some('+') | Some('-')) {
                        i += 1;
                    }
                }
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            if chars.get(i) == Some(&'u') || chars.get(i) == Some(&'U') {
                i += 1;
                out.push(Tok::UInt(
                    text.parse().map_err(|_| format!("bad number {text}"))?,
                ));
            } else if is_double {
                out.push(Tok::Double(
                    text.parse().map_err(|_| format!("bad number {text}"))?,
                ));
            } else {
                out.push(Tok::Int(
                    text.parse().map_err(|_| format!("bad number {text}"))?,
                ));
            }
            continue;
        }
        if c == '"' || c == '\'' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&ch) = chars.get(i) else {
                    return Err("unterminated string".into());
                };
                i += 1;
                if ch == quote {
                    break;
                }
                if ch == '\\' {
                    let Some(&esc) = chars.get(i) else {
                        return Err("unterminated string".into());
                    };
                    i += 1;
                    s.push(match esc {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        other => other,
                    });
                } else {
                    s.push(ch);
                }
            }
            out.push(Tok::Str(s));
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        match PUNCTS.iter().find(|p| rest.starts_with(**p)) {
            Some(p) => {
                out.push(Tok::Punct(p));
                i += p.len();
            }
            None => return Err(format!("unexpected character {c:?}")),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Lit(Value),
    Ident(String),
    Select(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Has(Box<Expr>, String),
    Call(Option<Box<Expr>>, String, Vec<Expr>),
    Macro(MacroKind, Box<Expr>, String, Box<Expr>, Option<Box<Expr>>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Binary(&'static str, Box<Expr>, Box<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    List(Vec<Expr>),
    Map(Vec<(Expr, Expr)>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MacroKind {
    All,
    Exists,
    ExistsOne,
    Map,
    Filter,
}

const FUNCTIONS: &[&str] = &[
    "size",
    "startsWith",
    "endsWith",
    "contains",
    "matches",
    "lowerAscii",
    "upperAscii",
    "int",
    "string",
    "double",
];

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, p: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Punct(q)) if *q == p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str) -> Result<(), String> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(format!("expected '{p}' at token {}", self.pos))
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let cond = self.or()?;
        if self.eat("?") {
            let a = self.expr()?;
            self.expect(":")?;
            let b = self.expr()?;
            return Ok(Expr::Cond(Box::new(cond), Box::new(a), Box::new(b)));
        }
        Ok(cond)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut l = self.and()?;
        while self.eat("||") {
            let r = self.and()?;
            l = Expr::Binary("||", Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut l = self.relation()?;
        while self.eat("&&") {
            let r = self.relation()?;
            l = Expr::Binary("&&", Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn relation(&mut self) -> Result<Expr, String> {
        let mut l = self.additive()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Punct(p)) if ["==", "!=", "<", "<=", ">", ">="].contains(p) => *p,
                Some(Tok::Ident(id)) if id == "in" => "in",
                _ => return Ok(l),
            };
            self.pos += 1;
            let r = self.additive()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn additive(&mut self) -> Result<Expr, String> {
        let mut l = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Punct(p)) if *p == "+" || *p == "-" => *p,
                _ => return Ok(l),
            };
            self.pos += 1;
            let r = self.multiplicative()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, String> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Punct(p)) if ["*", "/", "%"].contains(p) => *p,
                _ => return Ok(l),
            };
            self.pos += 1;
            let r = self.unary()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("-") {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        self.member()
    }

    fn args(&mut self) -> Result<Vec<Expr>, String> {
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            if self.eat(")") {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }

    fn member(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let Some(Tok::Ident(name)) = self.peek().cloned() else {
                    return Err("expected field name".into());
                };
                self.pos += 1;
                if self.eat("(") {
                    let args = self.args()?;
                    let kind = match name.as_str() {
                        "all" => Some(MacroKind::All),
                        "exists" => Some(MacroKind::Exists),
                        "exists_one" => Some(MacroKind::ExistsOne),
                        "map" => Some(MacroKind::Map),
                        "filter" => Some(MacroKind::Filter),
                        _ => None,
                    };
                    if let Some(kind) = kind {
                        let mut args = args.into_iter();
                        let (Some(Expr::Ident(var)), Some(first)) = (args.next(), args.next())
                        else {
                            return Err(format!("{name}() needs a variable and an expression"));
                        };
                        let second = args.next().map(Box::new);
                        e = Expr::Macro(kind, Box::new(e), var, Box::new(first), second);
                    } else {
                        if !FUNCTIONS.contains(&name.as_str()) {
                            return Err(format!("unsupported function {name}"));
                        }
                        e = Expr::Call(Some(Box::new(e)), name, args);
                    }
                } else {
                    e = Expr::Select(Box::new(e), name);
                }
            } else if self.eat("[") {
                let idx = self.expr()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(idx));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let Some(tok) = self.peek().cloned() else {
            return Err("unexpected end of expression".into());
        };
        self.pos += 1;
        match tok {
            Tok::Int(i) => Ok(Expr::Lit(Value::from(i))),
            Tok::UInt(u) => Ok(Expr::Lit(Value::from(u))),
            Tok::Double(d) => Ok(Expr::Lit(
                Number::from_f64(d)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
            )),
            Tok::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Tok::Ident(id) => match id.as_str() {
                "true" => Ok(Expr::Lit(Value::Bool(true))),
                "false" => Ok(Expr::Lit(Value::Bool(false))),
                "null" => Ok(Expr::Lit(Value::Null)),
                "has" => {
                    self.expect("(")?;
                    let arg = self.expr()?;
                    self.expect(")")?;
                    match arg {
                        Expr::Select(target, field) => Ok(Expr::Has(target, field)),
                        _ => Err("has() needs a field selection".into()),
                    }
                }
                _ if self.eat("(") => {
                    if !FUNCTIONS.contains(&id.as_str()) {
                        return Err(format!("unsupported function {id}"));
                    }
                    let args = self.args()?;
                    Ok(Expr::Call(None, id, args))
                }
                _ => Ok(Expr::Ident(id)),
            },
            Tok::Punct("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Punct("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.expr()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::List(items))
            }
            Tok::Punct("{") => {
                let mut entries = Vec::new();
                if !self.eat("}") {
                    loop {
                        let k = self.expr()?;
                        self.expect(":")?;
                        let v = self.expr()?;
                        entries.push((k, v));
                        if self.eat("}") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::Map(entries))
            }
            other => Err(format!("unexpected token {other:?}")),
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    expr: Expr,
    uses_old_self: bool,
}

impl Program {
    pub fn compile(src: &str) -> Result<Program, String> {
        let toks = lex(src)?;
        let uses_old_self = toks
            .iter()
            .any(|t| matches!(t, Tok::Ident(i) if i == "oldSelf"));
        let mut p = Parser { toks, pos: 0 };
        let expr = p.expr()?;
        if p.pos != p.toks.len() {
            return Err(format!("unexpected trailing input at token {}", p.pos));
        }
        Ok(Program {
            expr,
            uses_old_self,
        })
    }

    /// A transition rule, only evaluated on updates where the old value exists.
    pub fn is_transition_rule(&self) -> bool {
        self.uses_old_self
    }

    /// Evaluates to a bool; any other result or a runtime error is an error message.
    pub fn eval_bool(&self, self_value: &Value, old_self: Option<&Value>) -> Result<bool, String> {
        let env = Env {
            vars: vec![("self".to_string(), self_value.clone())],
            old_self: old_self.cloned(),
        };
        match eval(&self.expr, &env)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("rule evaluated to {other}, not a bool")),
        }
    }
}

struct Env {
    vars: Vec<(String, Value)>,
    old_self: Option<Value>,
}

impl Env {
    fn lookup(&self, name: &str) -> Result<Value, String> {
        if name == "oldSelf" {
            return self
                .old_self
                .clone()
                .ok_or_else(|| "oldSelf is not available".to_string());
        }
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("undeclared reference to '{name}'"))
    }

    fn with(&self, name: &str, v: Value) -> Env {
        let mut vars = self.vars.clone();
        vars.push((name.to_string(), v));
        Env {
            vars,
            old_self: self.old_self.clone(),
        }
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Result<Ordering, String> {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => {
            let (x, y) = (as_f64(a).unwrap_or(0.0), as_f64(b).unwrap_or(0.0));
            x.partial_cmp(&y)
                .ok_or_else(|| "NaN comparison".to_string())
        }
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
        _ => Err(format!("no such overload for comparing {a} and {b}")),
    }
}

fn int_value(v: &Value) -> Option<i64> {
    v.as_i64()
}

fn arith(op: &str, a: Value, b: Value) -> Result<Value, String> {
    match (&a, &b) {
        (Value::String(x), Value::String(y)) if op == "+" => Ok(Value::String(format!("{x}{y}"))),
        (Value::Array(x), Value::Array(y)) if op == "+" => {
            Ok(Value::Array(x.iter().chain(y).cloned().collect()))
        }
        (Value::Number(_), Value::Number(_)) => {
            if let (Some(x), Some(y)) = (int_value(&a), int_value(&b)) {
                let r = match op {
                    "+" => x.checked_add(y),
                    "-" => x.checked_sub(y),
                    "*" => x.checked_mul(y),
                    "/" => x.checked_div(y),
                    "%" => x.checked_rem(y),
                    _ => None,
                };
                return r
                    .map(Value::from)
                    .ok_or_else(|| "integer overflow or division by zero".to_string());
            }
            let (x, y) = (as_f64(&a).unwrap_or(0.0), as_f64(&b).unwrap_or(0.0));
            let r = match op {
                "+" => x + y,
                "-" => x - y,
                "*" => x * y,
                "/" => x / y,
                _ => return Err(format!("no such overload for {op} on doubles")),
            };
            Ok(Number::from_f64(r)
                .map(Value::Number)
                .unwrap_or(Value::Null))
        }
        _ => Err(format!("no such overload for {a} {op} {b}")),
    }
}

fn truthy(v: Result<Value, String>) -> Result<bool, String> {
    match v? {
        Value::Bool(b) => Ok(b),
        other => Err(format!("no such overload: expected bool, got {other}")),
    }
}

fn size_of(v: &Value) -> Result<Value, String> {
    match v {
        Value::String(s) => Ok(Value::from(s.chars().count() as i64)),
        Value::Array(a) => Ok(Value::from(a.len() as i64)),
        Value::Object(m) => Ok(Value::from(m.len() as i64)),
        other => Err(format!("no such overload for size({other})")),
    }
}

fn eval(e: &Expr, env: &Env) -> Result<Value, String> {
    match e {
        Expr::Lit(v) => Ok(v.clone()),
        Expr::Ident(name) => env.lookup(name),
        Expr::Select(target, field) => {
            let t = eval(target, env)?;
            match t {
                Value::Object(m) => m
                    .get(field)
                    .cloned()
                    .ok_or_else(|| format!("no such key: {field}")),
                other => Err(format!("cannot select field '{field}' from {other}")),
            }
        }
        Expr::Index(target, idx) => {
            let t = eval(target, env)?;
            let i = eval(idx, env)?;
            match (&t, &i) {
                (Value::Array(a), Value::Number(n)) => {
                    let n = n.as_i64().ok_or("index must be an integer")?;
                    usize::try_from(n)
                        .ok()
                        .and_then(|n| a.get(n))
                        .cloned()
                        .ok_or_else(|| format!("index out of bounds: {n}"))
                }
                (Value::Object(m), Value::String(k)) => {
                    m.get(k).cloned().ok_or_else(|| format!("no such key: {k}"))
                }
                _ => Err(format!("cannot index {t} with {i}")),
            }
        }
        Expr::Has(target, field) => match eval(target, env)? {
            Value::Object(m) => Ok(Value::Bool(m.contains_key(field))),
            other => Err(format!("has() on non-object {other}")),
        },
        Expr::Not(x) => Ok(Value::Bool(!truthy(eval(x, env))?)),
        Expr::Neg(x) => match eval(x, env)? {
            Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(Value::from(-i)),
                None => Ok(Number::from_f64(-n.as_f64().unwrap_or(0.0))
                    .map(Value::Number)
                    .unwrap_or(Value::Null)),
            },
            other => Err(format!("no such overload for -{other}")),
        },
        Expr::Binary("||", l, r) => {
            let left = truthy(eval(l, env));
            if left == Ok(true) {
                return Ok(Value::Bool(true));
            }
            let right = truthy(eval(r, env));
            match (left, right) {
                (_, Ok(true)) => Ok(Value::Bool(true)),
                (Ok(false), Ok(false)) => Ok(Value::Bool(false)),
                (Err(e), _) | (_, Err(e)) => Err(e),
                _ => Ok(Value::Bool(false)),
            }
        }
        Expr::Binary("&&", l, r) => {
            let left = truthy(eval(l, env));
            if left == Ok(false) {
                return Ok(Value::Bool(false));
            }
            let right = truthy(eval(r, env));
            match (left, right) {
                (_, Ok(false)) => Ok(Value::Bool(false)),
                (Ok(true), Ok(true)) => Ok(Value::Bool(true)),
                (Err(e), _) | (_, Err(e)) => Err(e),
                _ => Ok(Value::Bool(false)),
            }
        }
        Expr::Binary(op, l, r) => {
            let a = eval(l, env)?;
            let b = eval(r, env)?;
            match *op {
                "==" => Ok(Value::Bool(values_equal(&a, &b))),
                "!=" => Ok(Value::Bool(!values_equal(&a, &b))),
                "<" => Ok(Value::Bool(compare(&a, &b)? == Ordering::Less)),
                "<=" => Ok(Value::Bool(compare(&a, &b)? != Ordering::Greater)),
                ">" => Ok(Value::Bool(compare(&a, &b)? == Ordering::Greater)),
                ">=" => Ok(Value::Bool(compare(&a, &b)? != Ordering::Less)),
                "in" => match &b {
                    Value::Array(items) => {
                        Ok(Value::Bool(items.iter().any(|x| values_equal(x, &a))))
                    }
                    Value::Object(m) => {
                        Ok(Value::Bool(a.as_str().is_some_and(|k| m.contains_key(k))))
                    }
                    other => Err(format!("no such overload for 'in' {other}")),
                },
                _ => arith(op, a, b),
            }
        }
        Expr::Cond(c, a, b) => {
            if truthy(eval(c, env))? {
                eval(a, env)
            } else {
                eval(b, env)
            }
        }
        Expr::List(items) => Ok(Value::Array(
            items
                .iter()
                .map(|x| eval(x, env))
                .collect::<Result<_, _>>()?,
        )),
        Expr::Map(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                let key = match eval(k, env)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                m.insert(key, eval(v, env)?);
            }
            Ok(Value::Object(m))
        }
        Expr::Call(target, name, args) => {
            let mut vals = Vec::new();
            if let Some(t) = target {
                vals.push(eval(t, env)?);
            }
            for a in args {
                vals.push(eval(a, env)?);
            }
            call(name, &vals)
        }
        Expr::Macro(kind, target, var, first, second) => {
            let t = eval(target, env)?;
            let items: Vec<Value> = match t {
                Value::Array(a) => a,
                Value::Object(m) => m.keys().map(|k| Value::String(k.clone())).collect(),
                other => return Err(format!("cannot iterate over {other}")),
            };
            match kind {
                MacroKind::All => {
                    let mut err = None;
                    for it in items {
                        match truthy(eval(first, &env.with(var, it))) {
                            Ok(false) => return Ok(Value::Bool(false)),
                            Err(e) => err = Some(e),
                            Ok(true) => {}
                        }
                    }
                    err.map_or(Ok(Value::Bool(true)), Err)
                }
                MacroKind::Exists => {
                    let mut err = None;
                    for it in items {
                        match truthy(eval(first, &env.with(var, it))) {
                            Ok(true) => return Ok(Value::Bool(true)),
                            Err(e) => err = Some(e),
                            Ok(false) => {}
                        }
                    }
                    err.map_or(Ok(Value::Bool(false)), Err)
                }
                MacroKind::ExistsOne => {
                    let mut n = 0;
                    for it in items {
                        if truthy(eval(first, &env.with(var, it)))? {
                            n += 1;
                        }
                    }
                    Ok(Value::Bool(n == 1))
                }
                MacroKind::Map => {
                    let mut out = Vec::new();
                    for it in items {
                        let scoped = env.with(var, it);
                        match second {
                            Some(transform) => {
                                if truthy(eval(first, &scoped))? {
                                    out.push(eval(transform, &scoped)?);
                                }
                            }
                            None => out.push(eval(first, &scoped)?),
                        }
                    }
                    Ok(Value::Array(out))
                }
                MacroKind::Filter => {
                    let mut out = Vec::new();
                    for it in items {
                        if truthy(eval(first, &env.with(var, it.clone())))? {
                            out.push(it);
                        }
                    }
                    Ok(Value::Array(out))
                }
            }
        }
    }
}

fn call(name: &str, args: &[Value]) -> Result<Value, String> {
    let s = |i: usize| -> Result<&str, String> {
        args.get(i)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no such overload for {name}"))
    };
    match (name, args.len()) {
        ("size", 1) => size_of(&args[0]),
        ("startsWith", 2) => Ok(Value::Bool(s(0)?.starts_with(s(1)?))),
        ("endsWith", 2) => Ok(Value::Bool(s(0)?.ends_with(s(1)?))),
        ("contains", 2) => Ok(Value::Bool(s(0)?.contains(s(1)?))),
        ("matches", 2) => {
            let re = regex::Regex::new(s(1)?).map_err(|e| format!("invalid regex: {e}"))?;
            Ok(Value::Bool(re.is_match(s(0)?)))
        }
        ("lowerAscii", 1) => Ok(Value::String(s(0)?.to_ascii_lowercase())),
        ("upperAscii", 1) => Ok(Value::String(s(0)?.to_ascii_uppercase())),
        ("int", 1) => match &args[0] {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .map(Value::from)
                .ok_or_else(|| "int overflow".into()),
            Value::String(t) => t.parse::<i64>().map(Value::from).map_err(|e| e.to_string()),
            other => Err(format!("no such overload for int({other})")),
        },
        ("double", 1) => match &args[0] {
            Value::Number(n) => Ok(Number::from_f64(n.as_f64().unwrap_or(0.0))
                .map(Value::Number)
                .unwrap_or(Value::Null)),
            Value::String(t) => t
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| "invalid double".to_string()),
            other => Err(format!("no such overload for double({other})")),
        },
        ("string", 1) => Ok(Value::String(match &args[0] {
            Value::String(t) => t.clone(),
            other => other.to_string(),
        })),
        _ => Err(format!(
            "no such overload for {name} with {} arguments",
            args.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(rule: &str, v: Value) -> Result<bool, String> {
        Program::compile(rule).unwrap().eval_bool(&v, None)
    }

    // The rule the CiliumNetworkPolicy CRD carries: either spec or specs must be present.
    #[test]
    fn has_or_has() {
        let rule = "has(self.spec) || has(self.specs)";
        assert_eq!(check(rule, json!({"spec": {}})), Ok(true));
        assert_eq!(check(rule, json!({"specs": []})), Ok(true));
        assert_eq!(check(rule, json!({"metadata": {}})), Ok(false));
    }

    #[test]
    fn comparisons_sizes_and_logic() {
        let v = json!({"a": 3, "b": "xyz", "l": [1, 2, 3], "m": {"k": "v"}});
        assert_eq!(
            check("self.a == 3 && size(self.b) == 3", v.clone()),
            Ok(true)
        );
        assert_eq!(
            check("self.l.size() > 2 && !(self.a < 1)", v.clone()),
            Ok(true)
        );
        assert_eq!(check("'k' in self.m && 2 in self.l", v.clone()), Ok(true));
        assert_eq!(
            check(
                "self.b.startsWith('xy') ? self.a + 1 == 4 : false",
                v.clone()
            ),
            Ok(true)
        );
        assert_eq!(
            check(
                "self.l.all(x, x > 0) && self.l.exists(x, x == 2)",
                v.clone()
            ),
            Ok(true)
        );
        assert_eq!(check("self.l.exists_one(x, x > 2)", v.clone()), Ok(true));
        assert_eq!(
            check("self.l.filter(x, x > 1).size() == 2", v.clone()),
            Ok(true)
        );
        assert_eq!(check("self.b.matches('^x[a-z]+$')", v.clone()), Ok(true));
        assert_eq!(check("self.a != 3 || self.b == 'xyz'", v), Ok(true));
    }

    #[test]
    fn errors_are_absorbed_like_cel() {
        // `self.missing` is an error; `|| true` absorbs it, `&& true` does not.
        assert_eq!(check("self.missing == 1 || true", json!({})), Ok(true));
        assert!(check("self.missing == 1 && true", json!({})).is_err());
    }

    #[test]
    fn transition_rules() {
        let p = Program::compile("self == oldSelf").unwrap();
        assert!(p.is_transition_rule());
        assert_eq!(p.eval_bool(&json!("a"), Some(&json!("a"))), Ok(true));
        assert_eq!(p.eval_bool(&json!("a"), Some(&json!("b"))), Ok(false));
    }

    #[test]
    fn unsupported_functions_do_not_compile() {
        assert!(Program::compile("self.x.isIP()").is_err());
        assert!(Program::compile("self.x ==").is_err());
    }
}
