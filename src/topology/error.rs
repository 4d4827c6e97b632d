//! Topology problems: each names the file, the line and the dotted key, and all of them are
//! reported together so an operator fixes a file in one pass.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the key (or of its table when the key is missing); 0 when the
    /// problem is not about a line (the file cannot be read).
    pub line: usize,
    /// Dotted key path, e.g. `next_hop.probe.interval`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

/// Every problem found in one topology file. Never partial: a topology with problems is
/// rejected whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyError {
    /// The file (`None` for the embedded default).
    pub file: Option<PathBuf>,
    /// Sorted by line.
    pub problems: Vec<Problem>,
}

impl TopologyError {
    pub(crate) fn new(file: Option<&Path>, mut problems: Vec<Problem>) -> Self {
        problems.sort_by(|a, b| (a.line, &a.key).cmp(&(b.line, &b.key)));
        problems.dedup();
        TopologyError {
            file: file.map(Path::to_path_buf),
            problems,
        }
    }

    fn file_name(&self) -> String {
        self.file.as_deref().map_or_else(
            || "<embedded default>".to_string(),
            |p| p.display().to_string(),
        )
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file_name();
        let n = self.problems.len();
        write!(f, "{file}: {n} problem{}", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            // `file:line: key: message`, the shape editors and CI annotate.
            write!(f, "\n  {file}:{}: ", p.line)?;
            if !p.key.is_empty() {
                write!(f, "{}: ", p.key)?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for TopologyError {}
