//! A walker over the parsed TOML document that keeps every value's position, so
//! that each problem is reported as `FILE:LINE:COL: field.path: message`, and
//! that keeps going after a problem, so that `portcullis check` lists all of them
//! at once instead of making the user fix one per run.

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::duration::parse_duration;

/// A place in a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    pub line: usize,
    pub col: usize,
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub loc: Loc,
    /// The full key path, such as `route[2].upstream`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.loc.line,
            self.loc.col,
            self.field,
            self.message
        )
    }
}

/// Every problem found in a configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A value read from the configuration together with where it was written, so
/// that checks made later (a file that does not parse, a key that is too short)
/// still point at the right line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At<T> {
    pub value: T,
    pub loc: Loc,
    pub field: String,
}

impl<T> std::ops::Deref for At<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// The file being read and the problems found so far.
pub struct Source<'a> {
    file: PathBuf,
    base: PathBuf,
    text: &'a str,
    line_starts: Vec<usize>,
    problems: RefCell<Vec<Problem>>,
}

impl<'a> Source<'a> {
    pub fn new(file: &Path, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let base = file
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Source {
            file: file.to_path_buf(),
            base,
            text,
            line_starts,
            problems: RefCell::new(Vec::new()),
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Resolves a path written in the configuration against the configuration's folder.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    pub fn loc(&self, offset: usize) -> Loc {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let col = self.text[self.line_starts[line]..offset].chars().count() + 1;
        Loc {
            line: line + 1,
            col,
        }
    }

    pub fn report(&self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let loc = self.loc(span.start);
        self.report_at(loc, field, message);
    }

    pub fn report_at(&self, loc: Loc, field: &str, message: impl Into<String>) {
        self.problems.borrow_mut().push(Problem {
            file: self.file.clone(),
            loc,
            field: field.to_string(),
            message: message.into(),
        });
    }

    pub fn has_problems(&self) -> bool {
        !self.problems.borrow().is_empty()
    }

    pub fn into_problems(self) -> Vec<Problem> {
        let mut v = self.problems.into_inner();
        v.sort_by_key(|p| (p.loc.line, p.loc.col));
        v
    }
}

pub type Value<'i> = Spanned<DeValue<'i>>;

/// A TOML table being read; keys that nobody asked for are reported as unknown
/// when the reader is finished with it, because a misspelt security setting
/// must never fall back to its default silently.
pub struct Table<'t, 'i> {
    pub path: String,
    table: &'t DeTable<'i>,
    span: Range<usize>,
    used: RefCell<Vec<String>>,
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

pub fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl<'t, 'i> Table<'t, 'i> {
    pub fn root(table: &'t Spanned<DeTable<'i>>) -> Self {
        Table {
            path: String::new(),
            table: table.get_ref(),
            span: 0..0,
            used: RefCell::new(Vec::new()),
        }
    }

    /// Reads `value` as a table, reporting a type problem otherwise.
    pub fn from_value(src: &Source, value: &'t Value<'i>, path: String) -> Option<Self> {
        match value.get_ref() {
            DeValue::Table(t) => Some(Table {
                path,
                table: t,
                span: value.span(),
                used: RefCell::new(Vec::new()),
            }),
            other => {
                src.report(
                    value.span(),
                    &path,
                    format!("expected a table, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn field(&self, key: &str) -> String {
        child_path(&self.path, key)
    }

    pub fn loc(&self, src: &Source) -> Loc {
        src.loc(self.span.start)
    }

    /// Where `key` is written, or the table itself when it is absent.
    pub fn key_loc(&self, src: &Source, key: &str) -> Loc {
        match self.table.get_key_value(key) {
            Some((k, _)) => src.loc(k.span().start),
            None => self.loc(src),
        }
    }

    /// The raw value under `key`, marked as known.
    pub fn raw(&self, key: &str) -> Option<&'t Value<'i>> {
        self.used.borrow_mut().push(key.to_string());
        self.table.get(key)
    }

    /// Every entry, for tables whose keys are names chosen by the user
    /// (`[upstream.NAME]`, identity headers).
    pub fn entries(&self) -> impl Iterator<Item = (&'t str, Loc2<'t, 'i>)> + '_ {
        self.used.borrow_mut().push("*".into());
        self.table
            .iter()
            .map(|(k, v)| (k.get_ref().as_ref(), Loc2 { key: k, value: v }))
    }

    pub fn get<T: FromToml>(&self, src: &Source, key: &str) -> Option<T> {
        let v = self.raw(key)?;
        T::from_toml(src, v, &self.field(key))
    }

    pub fn get_at<T: FromToml>(&self, src: &Source, key: &str) -> Option<At<T>> {
        let v = self.raw(key)?;
        let field = self.field(key);
        let value = T::from_toml(src, v, &field)?;
        Some(At {
            value,
            loc: src.loc(v.span().start),
            field,
        })
    }

    pub fn or<T: FromToml>(&self, src: &Source, key: &str, default: T) -> T {
        self.get(src, key).unwrap_or(default)
    }

    pub fn required<T: FromToml>(&self, src: &Source, key: &str) -> Option<T> {
        if self.table.get(key).is_none() {
            self.used.borrow_mut().push(key.to_string());
            src.report(self.span.clone(), &self.field(key), "is required");
            return None;
        }
        self.get(src, key)
    }

    pub fn required_at<T: FromToml>(&self, src: &Source, key: &str) -> Option<At<T>> {
        if self.table.get(key).is_none() {
            self.used.borrow_mut().push(key.to_string());
            src.report(self.span.clone(), &self.field(key), "is required");
            return None;
        }
        self.get_at(src, key)
    }

    pub fn sub_table(&self, src: &Source, key: &str) -> Option<Table<'t, 'i>> {
        let v = self.raw(key)?;
        Table::from_value(src, v, self.field(key))
    }

    /// Reports every key that no reader asked for.
    pub fn finish(self, src: &Source, known_hint: &[&str]) {
        let path = self.path.clone();
        let used = self.used.into_inner();
        if used.iter().any(|k| k == "*") {
            return;
        }
        for (k, _) in self.table.iter() {
            let name: &str = k.get_ref().as_ref();
            if !used.iter().any(|u| u == name) {
                let hint = closest(name, known_hint)
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                src.report(
                    k.span(),
                    &child_path(&path, name),
                    format!("unknown key{hint}"),
                );
            }
        }
    }
}

/// A key and its value, both with positions.
pub struct Loc2<'t, 'i> {
    pub key: &'t Spanned<toml::de::DeString<'i>>,
    pub value: &'t Value<'i>,
}

fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A type that can be read from one TOML value; on failure it has reported why.
pub trait FromToml: Sized {
    fn from_toml(src: &Source, v: &Value<'_>, field: &str) -> Option<Self>;
}

fn mismatch<T>(src: &Source, v: &Value<'_>, field: &str, expected: &str) -> Option<T> {
    src.report(
        v.span(),
        field,
        format!("expected {expected}, found {}", type_name(v.get_ref())),
    );
    None
}

impl FromToml for bool {
    fn from_toml(src: &Source, v: &Value<'_>, field: &str) -> Option<Self> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => mismatch(src, v, field, "true or false"),
        }
    }
}

impl FromToml for String {
    fn from_toml(src: &Source, v: &Value<'_>, field: &str) -> Option<Self> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => mismatch(src, v, field, "a string"),
        }
    }
}

impl FromToml for u64 {
    fn from_toml(src: &Source, v: &Value<'_>, field: &str) -> Option<Self> {
        match v.get_ref() {
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                match u64::from_str_radix(&digits, i.radix()) {
                    Ok(n) => Some(n),
                    Err(_) => {
                        src.report(v.span(), field, "must be a whole number of 0 or more");
                        None
                    }
                }
            }
            _ => mismatch(src, v, field, "an integer"),
        }
    }
}

impl FromToml for usize {
    fn from_toml(src: &Source, v: &Value<'_>, field: &str) -> Option<Self> {
        let n = u64::from_toml(src, v, field)?;
        match usize::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                src.report(v.span(), field, "is too large");
                None
            }
        }
    }
}

impl FromToml for Duration {
    fn from_toml(src: &Source, v: &Value<'_>, field: &str) -> Option<Self> {
        match v.get_ref() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    src.report(v.span(), field, e);
                    None
                }
            },
            _ => mismatch(src, v, field, "a duration string such as \"30s\""),
        }
    }
}

impl FromToml for SocketAddr {
    fn from_toml(src: &Source, v: &Value<'_>, field: &str) -> Option<Self> {
        let s = String::from_toml(src, v, field)?;
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                src.report(
                    v.span(),
                    field,
                    format!("\"{s}\" is not an IP address with a port (like \"0.0.0.0:8443\" or \"[::]:8443\")"),
                );
                None
            }
        }
    }
}

/// A path from the configuration, already resolved against the configuration's folder.
impl FromToml for PathBuf {
    fn from_toml(src: &Source, v: &Value<'_>, field: &str) -> Option<Self> {
        let s = String::from_toml(src, v, field)?;
        if s.is_empty() {
            src.report(v.span(), field, "must not be empty");
            return None;
        }
        Some(src.resolve(&s))
    }
}

impl<T: FromToml> FromToml for Vec<T> {
    fn from_toml(src: &Source, v: &Value<'_>, field: &str) -> Option<Self> {
        match v.get_ref() {
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match T::from_toml(src, item, &format!("{field}[{i}]")) {
                        Some(x) => out.push(x),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            _ => mismatch(src, v, field, "an array"),
        }
    }
}

impl<T: FromToml> FromToml for At<T> {
    fn from_toml(src: &Source, v: &Value<'_>, field: &str) -> Option<Self> {
        let value = T::from_toml(src, v, field)?;
        Some(At {
            value,
            loc: src.loc(v.span().start),
            field: field.to_string(),
        })
    }
}

/// Iterates an array of tables such as `[[route]]`, naming each `route[i]`.
pub fn tables<'t, 'i>(src: &Source, v: &'t Value<'i>, field: &str) -> Vec<(usize, Table<'t, 'i>)> {
    match v.get_ref() {
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                Table::from_value(src, item, format!("{field}[{i}]")).map(|t| (i, t))
            })
            .collect(),
        DeValue::Table(_) => {
            src.report(
                v.span(),
                field,
                format!("expected an array of tables: write [[{field}]]"),
            );
            Vec::new()
        }
        other => {
            src.report(
                v.span(),
                field,
                format!("expected an array of tables, found {}", type_name(other)),
            );
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_from_one() {
        let src = Source::new(Path::new("x.toml"), "a = 1\nbb = 2\n");
        assert_eq!(src.loc(0), Loc { line: 1, col: 1 });
        assert_eq!(src.loc(6), Loc { line: 2, col: 1 });
        assert_eq!(src.loc(11), Loc { line: 2, col: 6 });
    }

    #[test]
    fn misspelt_keys_get_a_suggestion() {
        assert_eq!(
            closest(
                "header_read_timeuot",
                &["header_read_timeout", "idle_timeout"]
            ),
            Some("header_read_timeout")
        );
        assert_eq!(closest("zzz", &["listen"]), None);
    }
}
