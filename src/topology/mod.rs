//! Topology: the deployment described as TOML, resolved into a typed [`Topology`].
//!
//! Owns: the resolved model ([`model`]), the schema (`schema`: keys, defaults and checks,
//! one file per table), the strict spanned reader (`reader`), problem reporting (`error`)
//! and the embedded loopback default. Reading is all-or-nothing: every problem in
//! a file is reported at once with its line and dotted key, and a file with any problem
//! yields no topology. The rest of the program only sees [`Topology`].

mod error;
pub mod model;
mod reader;
mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::core::toml_depth::{nesting_depth, MAX_NESTING};
pub use error::{Problem, TopologyError};
pub use model::*;
pub use reader::parse_duration;
pub use schema::defaults;

/// The embedded default: the loopback example, byte for byte.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../topology/examples/loopback.toml");

/// What a topology takes from the process environment: the default state directory and
/// PKCS#12 passwords named by `password_env`. Captured once so parsing stays a function of
/// its inputs (tests and the fuzzer pass their own).
#[derive(Clone, Default)]
pub struct StateEnv {
    vars: BTreeMap<String, String>,
}

impl std::fmt::Debug for StateEnv {
    // Values may be passwords: show names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

impl StateEnv {
    /// The current process environment (variables that are not UTF-8 are skipped).
    pub fn from_process() -> Self {
        StateEnv {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    /// Sets one variable (tests).
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.vars.insert(key.to_string(), value.to_string());
        self
    }

    pub(crate) fn var(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// `$SIPEDGE_STATE_DIR`, else `$XDG_STATE_HOME/sipedge`, else `~/.local/state/sipedge`,
    /// else `/var/lib/sipedge` (a service account without a home).
    pub fn default_state_dir(&self) -> PathBuf {
        let non_empty = |k: &str| self.var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(dir) = non_empty("SIPEDGE_STATE_DIR") {
            dir
        } else if let Some(dir) = non_empty("XDG_STATE_HOME") {
            dir.join("sipedge")
        } else if let Some(home) = non_empty("HOME") {
            home.join(".local/state/sipedge")
        } else {
            PathBuf::from("/var/lib/sipedge")
        }
    }
}

/// Reads and resolves a topology file.
pub fn load(path: &Path) -> Result<Topology, TopologyError> {
    let text = std::fs::read(path).map_err(|e| {
        TopologyError::new(
            Some(path),
            vec![Problem {
                line: 0,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }],
        )
    })?;
    let text = String::from_utf8(text).map_err(|e| {
        let line = e
            .as_bytes()
            .get(..e.utf8_error().valid_up_to())
            .map_or(1, |b| b.iter().filter(|&&c| c == b'\n').count() + 1);
        TopologyError::new(
            Some(path),
            vec![Problem {
                line,
                key: String::new(),
                message: "not UTF-8 (TOML files are UTF-8)".to_string(),
            }],
        )
    })?;
    parse(&text, Some(path), &StateEnv::from_process())
}

/// Resolves topology text. `source` names the file in problems and anchors relative paths.
pub fn parse(text: &str, source: Option<&Path>, env: &StateEnv) -> Result<Topology, TopologyError> {
    let mut doc = reader::Doc::new(text);
    if nesting_depth(text) > MAX_NESTING {
        doc.problem(
            1,
            "",
            format!("arrays or inline tables nested deeper than {MAX_NESTING}"),
        );
        return Err(TopologyError::new(source, doc.problems));
    }
    let (root, syntax) = toml::de::DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // Resolving a tree the parser had to repair would report phantom problems.
        for e in syntax {
            let line = e.span().map_or(0, |span| doc.line_of(span));
            doc.problem(line, "", format!("TOML syntax: {}", e.message().trim()));
        }
        return Err(TopologyError::new(source, doc.problems));
    }
    match schema::resolve(&mut doc, root.get_ref(), source, env) {
        Some(t) if doc.problems.is_empty() => Ok(t),
        _ => Err(TopologyError::new(source, doc.problems)),
    }
}

/// The line of a dotted key (`internal.tls.ca`) in topology text, for problems found after
/// resolving (certificate files that cannot be loaded) so they too name file, line and key.
pub fn locate(text: &str, dotted: &str) -> Option<usize> {
    let (root, errors) = toml::de::DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return None;
    }
    let mut table = root.get_ref();
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        let value = table.get(part)?;
        if parts.peek().is_none() {
            return Some(reader::Doc::new(text).line_of(value.span()));
        }
        table = value.get_ref().as_table()?;
    }
    None
}

/// The embedded loopback default (`sipedge run` without `--topology`): external TLS SIP on
/// 127.0.0.1:5061, internal on 127.0.0.2:5061, next hop 127.0.0.1:5070, dev certificates.
pub fn embedded_default() -> Result<Topology, TopologyError> {
    parse(EMBEDDED_DEFAULT, None, &StateEnv::from_process())
}

#[cfg(test)]
mod tests;
