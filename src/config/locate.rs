//! Maps key paths (`sources[1].schedule`) to places in the TOML text and back,
//! so every config error can name the key and the line it is on.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted key path such as `train.lr` or `sources[0].schedule`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_owned()));
        KeyPath(v)
    }

    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }

    /// Parses `a.b[2].c` (keys without dots or brackets, which is all the config uses).
    pub fn parse(s: &str) -> Self {
        let mut segs = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(open) = rest.find('[') {
                segs.push(Seg::Key(rest[..open].to_owned()));
                rest = &rest[open..];
                while let Some(stripped) = rest.strip_prefix('[') {
                    let close = stripped.find(']').unwrap_or(stripped.len());
                    if let Ok(i) = stripped[..close].parse() {
                        segs.push(Seg::Index(i));
                    }
                    rest = stripped.get(close + 1..).unwrap_or("");
                }
            } else {
                segs.push(Seg::Key(rest.to_owned()));
            }
        }
        KeyPath(segs)
    }

    fn parent(&self) -> Option<Self> {
        if self.0.is_empty() {
            None
        } else {
            Some(KeyPath(self.0[..self.0.len() - 1].to_vec()))
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A line and column, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCol {
    pub line: usize,
    pub col: usize,
}

struct Entry {
    path: KeyPath,
    key: Option<Range<usize>>,
    value: Range<usize>,
}

/// Every key and value of a document with its byte span.
pub struct SpanIndex<'a> {
    text: &'a str,
    entries: Vec<Entry>,
}

impl<'a> SpanIndex<'a> {
    /// Builds the index; a document with syntax errors still yields what could be parsed.
    pub fn new(text: &'a str) -> Self {
        let (doc, _errors) = DeTable::parse_recoverable(text);
        let mut entries = Vec::new();
        walk_table(doc.get_ref(), &KeyPath::root(), &mut entries);
        SpanIndex { text, entries }
    }

    /// The key path whose key or value encloses `offset` most tightly.
    pub fn path_at(&self, offset: usize) -> Option<KeyPath> {
        self.entries
            .iter()
            .filter_map(|e| {
                let in_key = e
                    .key
                    .as_ref()
                    .filter(|k| k.contains(&offset))
                    .map(|k| k.len());
                let in_value = e.value.contains(&offset).then(|| e.value.len());
                in_key.or(in_value).map(|len| (len, e))
            })
            .min_by_key(|(len, e)| (*len, std::cmp::Reverse(e.path.0.len())))
            .map(|(_, e)| e.path.clone())
    }

    /// Where `path` is written: its key if present, else the nearest enclosing table.
    pub fn locate(&self, path: &KeyPath) -> Option<LineCol> {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            if let Some(e) = self.entries.iter().find(|e| e.path == cur) {
                let start = e.key.as_ref().map_or(e.value.start, |k| k.start);
                return Some(self.line_col(start));
            }
            p = cur.parent();
        }
        None
    }

    pub fn line_col(&self, offset: usize) -> LineCol {
        let offset = offset.min(self.text.len());
        let before = &self.text.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let col = self.text[line_start..offset].chars().count() + 1;
        LineCol { line, col }
    }
}

fn walk_table(table: &DeTable<'_>, path: &KeyPath, out: &mut Vec<Entry>) {
    for (k, v) in table.iter() {
        let p = path.key(k.get_ref());
        out.push(Entry {
            path: p.clone(),
            key: Some(k.span()),
            value: v.span(),
        });
        walk_value(v.get_ref(), &p, out);
    }
}

fn walk_value(value: &DeValue<'_>, path: &KeyPath, out: &mut Vec<Entry>) {
    match value {
        DeValue::Table(t) => walk_table(t, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let p = path.index(i);
                out.push(Entry {
                    path: p.clone(),
                    key: None,
                    value: item.span(),
                });
                walk_value(item.get_ref(), &p, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[train]\nlr = 0.1\n\n[[sources]]\nname = \"a\"\n\n[[sources]]\nname = \"b\"\nschedule = \"x\"\n";

    #[test]
    fn locates_keys_and_array_tables() {
        let idx = SpanIndex::new(DOC);
        assert_eq!(idx.locate(&KeyPath::parse("train.lr")).unwrap().line, 2);
        assert_eq!(
            idx.locate(&KeyPath::parse("sources[1].schedule"))
                .unwrap()
                .line,
            9
        );
        // A missing key falls back to its table.
        let missing = idx.locate(&KeyPath::parse("sources[1].kind")).unwrap();
        assert!(missing.line >= 7 && missing.line <= 9, "{missing:?}");
    }

    #[test]
    fn finds_path_from_offset() {
        let idx = SpanIndex::new(DOC);
        let off = DOC.find("schedule").unwrap() + 2;
        assert_eq!(idx.path_at(off).unwrap().to_string(), "sources[1].schedule");
        let off = DOC.find("0.1").unwrap();
        assert_eq!(idx.path_at(off).unwrap().to_string(), "train.lr");
    }

    #[test]
    fn key_path_round_trips() {
        for s in ["a", "a.b", "sources[3].fields.answer"] {
            assert_eq!(KeyPath::parse(s).to_string(), s);
        }
    }
}
