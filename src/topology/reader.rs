//! A strict reader over the spanned TOML tree: typed getters that record a [`Problem`] (with
//! line and dotted key) instead of failing, so one pass finds every problem.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::Problem;

/// The document being read and the problems found so far.
pub(super) struct Doc<'t> {
    text: &'t str,
    pub(super) problems: Vec<Problem>,
}

/// One table of the document with the keys the schema allows for it.
#[derive(Clone, Copy)]
pub(super) struct Section<'a, 'i> {
    pub(super) path: &'a str,
    table: Option<&'a DeTable<'i>>,
    /// Where the table starts (problems about missing keys point here).
    line: usize,
}

impl<'t> Doc<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        Doc {
            text,
            problems: Vec::new(),
        }
    }

    pub(super) fn line_of(&self, span: Range<usize>) -> usize {
        let before = self.text.get(..span.start).unwrap_or(self.text);
        before.bytes().filter(|&b| b == b'\n').count() + 1
    }

    pub(super) fn problem(
        &mut self,
        line: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    /// The root table, checked against `known`.
    pub(super) fn root<'a, 'i>(
        &mut self,
        table: &'a DeTable<'i>,
        known: &[&str],
    ) -> Section<'a, 'i> {
        let section = Section {
            path: "",
            table: Some(table),
            line: 1,
        };
        self.check_keys(section, known);
        section
    }

    /// A sub-table; `required` reports its absence. An absent optional table reads as empty
    /// (every key takes its default).
    pub(super) fn table<'a, 'i>(
        &mut self,
        parent: Section<'a, 'i>,
        path: &'a str,
        known: &[&str],
        required: bool,
    ) -> Section<'a, 'i> {
        let name = path.rsplit('.').next().unwrap_or(path);
        match parent.raw(name) {
            // Inside a missing table, its own absence is the one problem to report.
            None if required && parent.present() => {
                self.problem(parent.line, path, "missing table (required)")
            }
            None => {}
            Some(v) => match v.get_ref() {
                DeValue::Table(_) => {}
                other => {
                    let line = self.line_of(v.span());
                    self.problem(
                        line,
                        path,
                        format!("expected a table, found {}", describe(other)),
                    );
                }
            },
        }
        let section = self.peek(parent, path);
        self.check_keys(section, known);
        section
    }

    /// The names of a table of named entries (`[federation.partners.NAME]`), in file order;
    /// a name with a dot in it (quoted) is a problem, as dotted keys name the entries.
    pub(super) fn entry_names(&mut self, s: Section<'_, '_>) -> Vec<String> {
        let Some(table) = s.table else {
            return Vec::new();
        };
        let mut names = Vec::new();
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if name.contains('.') || name.is_empty() {
                let line = self.line_of(key.span());
                self.problem(line, s.key(name), "an entry name without dots");
            } else {
                names.push(name.to_string());
            }
        }
        names
    }

    /// A sub-table without checks (for cross-checks that only need lines).
    pub(super) fn peek<'a, 'i>(&self, parent: Section<'a, 'i>, path: &'a str) -> Section<'a, 'i> {
        let name = path.rsplit('.').next().unwrap_or(path);
        match parent.raw(name).map(|v| (v.get_ref(), v.span())) {
            Some((DeValue::Table(t), span)) => Section {
                path,
                table: Some(t),
                line: self.line_of(span),
            },
            _ => Section {
                path,
                table: None,
                line: parent.line,
            },
        }
    }

    fn check_keys(&mut self, section: Section<'_, '_>, known: &[&str]) {
        let Some(table) = section.table else { return };
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if !known.contains(&name) {
                let line = self.line_of(key.span());
                let hint = if known.is_empty() {
                    "this table takes no keys".to_string()
                } else {
                    format!("known keys here: {}", known.join(", "))
                };
                self.problem(line, section.key(name), format!("unknown key ({hint})"));
            }
        }
    }

    /// A value with its line, or a "missing" problem when `required`.
    fn value<'a, 'i>(
        &mut self,
        s: Section<'a, 'i>,
        key: &str,
        required: bool,
    ) -> Option<(&'a DeValue<'i>, usize)> {
        match s.raw(key) {
            Some(v) => Some((v.get_ref(), self.line_of(v.span()))),
            None => {
                if required && s.present() {
                    self.problem(s.line, s.key(key), "missing key (required)");
                }
                None
            }
        }
    }

    fn wrong_type(
        &mut self,
        s: Section<'_, '_>,
        key: &str,
        line: usize,
        want: &str,
        got: &DeValue<'_>,
    ) {
        self.problem(
            line,
            s.key(key),
            format!("expected {want}, found {}", describe(got)),
        );
    }

    pub(super) fn string(
        &mut self,
        s: Section<'_, '_>,
        key: &str,
        required: bool,
    ) -> Option<(String, usize)> {
        let (v, line) = self.value(s, key, required)?;
        match v {
            DeValue::String(text) => Some((text.to_string(), line)),
            other => {
                self.wrong_type(s, key, line, "a string", other);
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, s: Section<'_, '_>, key: &str) -> Option<(bool, usize)> {
        let (v, line) = self.value(s, key, false)?;
        match v {
            DeValue::Boolean(b) => Some((*b, line)),
            other => {
                self.wrong_type(s, key, line, "true or false", other);
                None
            }
        }
    }

    pub(super) fn string_list(
        &mut self,
        s: Section<'_, '_>,
        key: &str,
        required: bool,
    ) -> Option<(Vec<String>, usize)> {
        let (v, line) = self.value(s, key, required)?;
        let DeValue::Array(items) = v else {
            self.wrong_type(s, key, line, "an array of strings", v);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(text) => out.push(text.to_string()),
                other => {
                    let at = self.line_of(item.span());
                    self.wrong_type(s, key, at, "an array of strings", other);
                    return None;
                }
            }
        }
        Some((out, line))
    }

    /// An integer within `range` (inclusive), or the default when absent.
    pub(super) fn integer(
        &mut self,
        s: Section<'_, '_>,
        key: &str,
        range: (u64, u64),
        default: u64,
    ) -> u64 {
        let Some((v, line)) = self.value(s, key, false) else {
            return default;
        };
        let DeValue::Integer(i) = v else {
            self.wrong_type(s, key, line, "an integer", v);
            return default;
        };
        match u64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n >= range.0 && n <= range.1 => n,
            _ => {
                self.problem(
                    line,
                    s.key(key),
                    format!("{} is out of range ({}..={})", i.as_str(), range.0, range.1),
                );
                default
            }
        }
    }

    /// A duration: an integer number of seconds or a string with a unit (`250ms`, `10s`,
    /// `5m`, `2h`, `1d`), within `range`; the default when absent.
    pub(super) fn duration(
        &mut self,
        s: Section<'_, '_>,
        key: &str,
        range: (Duration, Duration),
        default: Duration,
    ) -> Duration {
        let Some((v, line)) = self.value(s, key, false) else {
            return default;
        };
        let parsed = match v {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(Duration::from_secs),
            DeValue::String(text) => parse_duration(text),
            other => {
                self.wrong_type(s, key, line, "seconds or a duration such as \"30s\"", other);
                return default;
            }
        };
        match parsed {
            Some(d) if d >= range.0 && d <= range.1 => d,
            Some(_) => {
                self.problem(
                    line,
                    s.key(key),
                    format!(
                        "out of range ({} to {})",
                        show_duration(range.0),
                        show_duration(range.1)
                    ),
                );
                default
            }
            None => {
                self.problem(
                    line,
                    s.key(key),
                    "not a duration (write seconds, or a number with ms, s, m, h or d)",
                );
                default
            }
        }
    }

    pub(super) fn socket_addr(
        &mut self,
        s: Section<'_, '_>,
        key: &str,
        required: bool,
    ) -> Option<(SocketAddr, usize)> {
        let (text, line) = self.string(s, key, required)?;
        match parse_socket_addr(&text) {
            Ok(addr) => Some((addr, line)),
            Err(why) => {
                self.problem(line, s.key(key), why);
                None
            }
        }
    }

    pub(super) fn socket_addr_list(
        &mut self,
        s: Section<'_, '_>,
        key: &str,
        required: bool,
    ) -> Option<(Vec<SocketAddr>, usize)> {
        self.parsed_list(s, key, required, parse_socket_addr)
    }

    /// A list of strings, each read by `parse` (whose `Err` is the problem to report: every
    /// bad item is reported); `None` on a problem.
    pub(super) fn parsed_list<T>(
        &mut self,
        s: Section<'_, '_>,
        key: &str,
        required: bool,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<(Vec<T>, usize)> {
        let (items, line) = self.string_list(s, key, required)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for text in &items {
            match parse(text) {
                Ok(item) => out.push(item),
                Err(why) => {
                    self.problem(line, s.key(key), why);
                    ok = false;
                }
            }
        }
        ok.then_some((out, line))
    }

    /// An optional [`Doc::parsed_list`]: empty when absent, `None` on a problem (reported).
    pub(super) fn optional_list<T>(
        &mut self,
        s: Section<'_, '_>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        match self.parsed_list(s, key, false, parse) {
            Some((items, _)) => Some(items),
            None => (!s.has(key)).then(Vec::new),
        }
    }

    /// The line of `key` if present, else of its table (for cross-checks).
    pub(super) fn line_of_key(&self, s: Section<'_, '_>, key: &str) -> usize {
        s.raw(key).map_or(s.line, |v| self.line_of(v.span()))
    }
}

impl<'a, 'i> Section<'a, 'i> {
    fn raw(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.table?.get(key)
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    pub(super) fn present(&self) -> bool {
        self.table.is_some()
    }

    /// The dotted path of `key` in this table.
    pub(super) fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

fn describe(v: &DeValue<'_>) -> &'static str {
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

pub(super) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => Err(format!("\"{text}\": port 0 is not allowed")),
        Ok(addr) if addr.ip().is_unspecified() => Err(format!(
            "\"{text}\": bind to the interface's own address, not a wildcard (the edge must never listen on both zones)"
        )),
        Ok(addr) => Ok(addr),
        Err(_) => Err(format!(
            "\"{text}\" is not an address:port (IPv6 as [addr]:port; names are not resolved here)"
        )),
    }
}

/// `250ms`, `10s`, `5m`, `2h`, `1d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }?;
    Some(Duration::from_millis(ms))
}

pub(super) fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("99999999999999999999d"), None);
    }

    #[test]
    fn addresses() {
        assert!(parse_socket_addr("127.0.0.1:5061").is_ok());
        assert!(parse_socket_addr("[::1]:5061").is_ok());
        assert!(parse_socket_addr("0.0.0.0:5061").is_err());
        assert!(parse_socket_addr("127.0.0.1:0").is_err());
        assert!(parse_socket_addr("edge.example:5061").is_err());
    }
}
