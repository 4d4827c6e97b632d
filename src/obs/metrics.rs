//! The Prometheus text exposition format (version 0.0.4), written by hand: a few families
//! of counters and gauges do not need a metrics framework. Owns formatting and label
//! escaping only; the edge's families are named in [`super::render`], and what is measured
//! lives with the code that measures it.

use std::fmt::Write as _;

/// Accumulates metric families into one text document.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// A metric family's kind.
#[derive(Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Exposition {
    /// Starts a family: `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut e = Exposition::default();
        e.family("x_total", Kind::Counter, "Things.\nMore")
            .sample("x_total", &[("zone", "external"), ("why", "a\"b\\c\nd")], 3)
            .family("y", Kind::Gauge, "G")
            .sample("y", &[], 0);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\\nMore\n# TYPE x_total counter\n\
             x_total{zone=\"external\",why=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP y G\n# TYPE y gauge\ny 0\n"
        );
    }
}
