//! A guard the TOML readers run first: how deeply arrays and inline tables nest.

/// The deepest nesting of arrays and inline tables in TOML `text` (brackets inside strings
/// and comments do not count). The TOML parsers recurse per level, so a file of a few KiB
/// of `[[[[…` could exhaust a thread's stack: callers refuse deep files before parsing.
pub fn nesting_depth(text: &str) -> usize {
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' | '\'' => {
                let quote = c;
                while let Some(c) = chars.next() {
                    if c == '\\' && quote == '"' {
                        chars.next();
                    } else if c == quote {
                        break;
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Deepest nesting accepted (a topology needs 2, a ring 2).
pub const MAX_NESTING: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_ignores_strings_and_comments() {
        assert_eq!(nesting_depth("a = [\"[::1]:5061\", \"x\"]\n[t]\n"), 1);
        assert_eq!(nesting_depth("a = [[1], [2]] # [[[[[\n"), 2);
        assert_eq!(nesting_depth("a = '[[[[' \nb = \"\\\"[[[\""), 0);
        assert_eq!(nesting_depth(&"[".repeat(1000)), 1000);
    }
}
