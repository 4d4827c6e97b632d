//! Golden accept/reject files: what the Access Edge does with each committed SIP message.
//!
//! Every `tests/golden/{external,internal}/<NN>-<slug>.sip` is expanded (see
//! `tests/golden/README.md`), run through `sipedge::fuzz_logic::golden::run` as arriving on
//! flow 1 of that side, and the outcome is compared with the sibling `.expected` (events, one
//! per line) and `.forwarded` (the forwarded bytes, normalised) files.
//!
//! `UPDATE_GOLDEN=1 cargo test --test golden` (re)writes `.expected` and `.forwarded`; review
//! the diff before committing it. Without it, any mismatch fails with a diff naming the file.
//!
//! Independent of the files, every forwarded message must re-parse with the edge's own
//! validator: nothing malformed reaches the other side (known defects are listed, with the
//! reason, in [`KNOWN_MALFORMED`]).

// Tests may unwrap, index and panic: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sipedge::core::sip::message::Message;
use sipedge::core::sip::parse::HeadLimits;
use sipedge::core::sip::proxy::Side;
use sipedge::fuzz_logic::golden::{self, Outcome};

/// The suite must pin down at least this many messages.
const MIN_CASES: usize = 80;

/// Generous limits for re-parsing forwarded bytes: the edge adds header lines, and what is
/// checked here is the grammar, not the size policy.
const REPARSE_LIMITS: HeadLimits = HeadLimits {
    max_headers: 4096,
    max_line_bytes: 1 << 20,
};

/// Cases whose forwarded bytes are known not to re-parse: a defect of the edge recorded by
/// the golden files, not a mismatch. Each entry is `(case, why)`. The harness fails if a
/// listed case starts re-parsing (fixed: remove the entry) or stops existing; any case not
/// listed here that forwards a malformed message fails the suite.
const KNOWN_MALFORMED: &[(&str, &str)] = &[];

/// Highest flow number whose token is written back as `<FTOK:n>` in `.forwarded` files.
const MAX_FTOK: u64 = 16;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| !v.is_empty() && v != "0")
}

/// One `.sip` file.
struct Case {
    side: Side,
    /// `external/001-invite-sdp` (for messages).
    name: String,
    /// The path without extension.
    stem: PathBuf,
}

impl Case {
    fn with_ext(&self, ext: &str) -> PathBuf {
        self.stem.with_extension(ext)
    }
}

/// `NN-slug`: two or more digits, a dash, then lower-case letters, digits and dashes.
fn number_of(stem: &str) -> Option<&str> {
    let (number, slug) = stem.split_once('-')?;
    let ok = number.len() >= 2
        && number.bytes().all(|b| b.is_ascii_digit())
        && !slug.is_empty()
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(number)
}

/// Lists the cases, and reports misnamed, duplicate-numbered and orphaned files.
fn collect(problems: &mut Vec<String>) -> Vec<Case> {
    let mut cases = Vec::new();
    for (dir, side) in [("external", Side::External), ("internal", Side::Internal)] {
        let path = root().join(dir);
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("{}: cannot read directory: {e}", path.display()));
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        let mut numbers: BTreeMap<String, String> = BTreeMap::new();
        for file in &files {
            let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
            let Some((stem, ext)) = file_name.rsplit_once('.') else {
                problems.push(format!("{dir}/{file_name}: no extension"));
                continue;
            };
            match ext {
                "sip" => {
                    let Some(number) = number_of(stem) else {
                        problems.push(format!(
                            "{dir}/{file_name}: name must be <NN>-<slug>.sip (slug: a-z, 0-9, -)"
                        ));
                        continue;
                    };
                    if let Some(other) = numbers.insert(number.to_string(), stem.to_string()) {
                        problems.push(format!(
                            "{dir}/{file_name}: number {number} also used by {dir}/{other}.sip"
                        ));
                    }
                    cases.push(Case {
                        side,
                        name: format!("{dir}/{stem}"),
                        stem: path.join(stem),
                    });
                }
                "expected" | "forwarded" => {
                    if !path.join(format!("{stem}.sip")).exists() {
                        problems.push(format!("{dir}/{file_name}: no {stem}.sip beside it"));
                    }
                }
                _ => problems.push(format!(
                    "{dir}/{file_name}: unexpected file (only .sip, .expected, .forwarded)"
                )),
            }
        }
    }
    cases
}

/// Drops the leading comment lines (`# ...`, or a lone `#`).
fn strip_comments(text: &str) -> &str {
    let mut rest = text;
    while rest.starts_with("# ") || rest.starts_with("#\n") || rest == "#" {
        rest = rest.split_once('\n').map_or("", |(_, after)| after);
    }
    rest
}

/// `.sip` text to wire bytes: every LF becomes CRLF, then the markers are expanded.
fn expand(text: &str) -> Result<Vec<u8>, String> {
    if let Some(at) = text
        .bytes()
        .position(|b| (b < 0x20 && b != b'\t' && b != b'\n') || b == 0x7f)
    {
        return Err(format!(
            "raw control byte 0x{:02x} at offset {at}: write it as a marker (<CR>, <NUL>, <HEX:xx>), \
             and check that git did not convert line endings",
            text.as_bytes()[at]
        ));
    }
    let crlf = text.replace('\n', "\r\n");
    let bytes = crlf.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            if let Some(len) = bytes[i..].iter().take(160).position(|&b| b == b'>') {
                let inner = std::str::from_utf8(&bytes[i + 1..i + len]).unwrap_or("");
                if let Some(expansion) = marker(inner)? {
                    out.extend_from_slice(&expansion);
                    i += len + 1;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Ok(out)
}

/// The bytes of one marker (the text between `<` and `>`), `None` if it is not a marker.
fn marker(inner: &str) -> Result<Option<Vec<u8>>, String> {
    let (name, arg) = match inner.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (inner, None),
    };
    let number = |a: Option<&str>| -> Result<u64, String> {
        a.and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("bad marker <{inner}>: expected a decimal number"))
    };
    Ok(Some(match (name, arg) {
        ("LF", None) => b"\n".to_vec(),
        ("CR", None) => b"\r".to_vec(),
        ("CRLF", None) => b"\r\n".to_vec(),
        ("NUL", None) => vec![0],
        ("HEX", Some(a)) => {
            let byte = (a.len() == 2)
                .then(|| u8::from_str_radix(a, 16).ok())
                .flatten()
                .ok_or_else(|| format!("bad marker <{inner}>: expected two hex digits"))?;
            vec![byte]
        }
        ("FTOK", a) => golden::token(number(a)?).into_bytes(),
        ("PTOK", a) => golden::path_token(number(a)?).into_bytes(),
        ("BRANCH", Some(a)) => {
            // <BRANCH:from:to:sender-branch:call-id>: the edge's branch hash for that
            // transaction (what a response must carry to be forwarded).
            let bad = || format!("bad marker <{inner}>: expected <BRANCH:from:to:branch:call-id>");
            let mut parts = a.splitn(4, ':');
            let (Some(from), Some(to), Some(branch), Some(call_id)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let from: u64 = from.parse().map_err(|_| bad())?;
            let to: u64 = to.parse().map_err(|_| bad())?;
            golden::branch(from, to, branch, call_id).into_bytes()
        }
        ("RTOK", Some(a)) => {
            // <RTOK:o|i:n:call-id:tag>: the Record-Route token of flow n for that dialog.
            let bad = || format!("bad marker <{inner}>: expected <RTOK:o|i:n:call-id:tag>");
            let mut parts = a.splitn(3, ':');
            let (Some(kind), Some(n), Some(rest)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let (call_id, tag) = rest.rsplit_once(':').ok_or_else(bad)?;
            let n: u64 = n.parse().map_err(|_| bad())?;
            let kind = kind
                .chars()
                .next()
                .filter(|_| kind.len() == 1)
                .ok_or_else(bad)?;
            golden::dialog_token(kind, n, call_id, tag)
                .ok_or_else(bad)?
                .into_bytes()
        }
        ("BODY", a) => vec![b'x'; usize::try_from(number(a)?).unwrap()],
        _ => return Ok(None),
    }))
}

/// The (Call-ID, tag) pairs of forwarded messages: what their dialog tokens may be bound to.
fn dialogs_of(messages: &[Vec<u8>]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for bytes in messages {
        let Ok(m) = Message::parse(Bytes::copy_from_slice(bytes), &REPARSE_LIMITS) else {
            continue;
        };
        let call_id = String::from_utf8_lossy(m.bytes(m.call_id)).to_string();
        for tag in [m.from_tag, m.to_tag].into_iter().flatten() {
            out.push((
                call_id.clone(),
                String::from_utf8_lossy(m.bytes(tag)).to_string(),
            ));
        }
    }
    out
}

/// Forwarded bytes as committed text: the edge's branch masked, flow tokens written as
/// `<FTOK:n>`, `<PTOK:n>` and `<RTOK:o|i:n:call-id:tag>`, CRLF as LF, and any other control
/// byte, bare CR or LF, or non-UTF-8 byte as a marker (so the text maps back to exactly one
/// byte string). `dialogs` are the (Call-ID, tag) pairs dialog tokens may be bound to.
fn normalise(bytes: &[u8], dialogs: &[(String, String)]) -> String {
    const PREFIX: &[u8] = b"branch=z9hG4bKse";
    let mut masked = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(PREFIX) {
            let hex = &bytes[i + PREFIX.len()..];
            if hex.len() >= 16 && hex[..16].iter().all(u8::is_ascii_hexdigit) {
                masked.extend_from_slice(PREFIX);
                masked.extend_from_slice(b"<BRANCH>");
                i += PREFIX.len() + 16;
                continue;
            }
        }
        masked.push(bytes[i]);
        i += 1;
    }

    let mut text = String::with_capacity(masked.len());
    for chunk in masked.utf8_chunks() {
        let valid = chunk.valid();
        let mut chars = valid.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' if chars.peek() == Some(&'\n') => {
                    chars.next();
                    text.push('\n');
                }
                '\r' => text.push_str("<CR>"),
                '\n' => text.push_str("<LF>"),
                '\0' => text.push_str("<NUL>"),
                '\t' => text.push('\t'),
                c if c < ' ' || c == '\u{7f}' => {
                    let _ = write!(text, "<HEX:{:02x}>", u32::from(c));
                }
                c => text.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(text, "<HEX:{b:02x}>");
        }
    }
    for n in 0..=MAX_FTOK {
        text = text.replace(&golden::token(n), &format!("<FTOK:{n}>"));
        text = text.replace(&golden::path_token(n), &format!("<PTOK:{n}>"));
        for (call_id, tag) in dialogs {
            for kind in ['o', 'i'] {
                if let Some(t) = golden::dialog_token(kind, n, call_id, tag) {
                    text = text.replace(&t, &format!("<RTOK:{kind}:{n}:{call_id}:{tag}>"));
                }
            }
        }
    }
    text
}

/// A line diff (longest common subsequence), `-` expected, `+` actual.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "    {}", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] > lcs[i + 1][j]) {
            let _ = writeln!(out, "  + {}", b[j]);
            j += 1;
        } else {
            let _ = writeln!(out, "  - {}", a[i]);
            i += 1;
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        out.push_str("  (final newline differs)\n");
    }
    out
}

/// Compares (or, when updating, writes) one golden file. `None` means "must not exist".
fn check_file(path: &Path, actual: Option<&str>, update: bool, problems: &mut Vec<String>) {
    let shown = path
        .strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string();
    let committed = std::fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).replace("\r\n", "\n"));
    if update {
        match actual {
            Some(text) if committed.as_deref() != Some(text) => {
                std::fs::write(path, text).unwrap();
            }
            None if committed.is_some() => std::fs::remove_file(path).unwrap(),
            _ => {}
        }
        return;
    }
    match (committed, actual) {
        (Some(c), Some(a)) if c == a => {}
        (Some(c), Some(a)) => problems.push(format!(
            "{shown}: outcome differs from the committed file (- committed, + actual):\n{}",
            diff(&c, a)
        )),
        (None, Some(a)) => problems.push(format!(
            "{shown}: missing; the edge's outcome would be:\n{a}\
             (run UPDATE_GOLDEN=1 cargo test --test golden to write it, then review it)"
        )),
        (Some(_), None) => problems.push(format!(
            "{shown}: exists but the edge forwarded nothing (UPDATE_GOLDEN=1 removes it)"
        )),
        (None, None) => {}
    }
}

fn run_case(case: &Case, update: bool, problems: &mut Vec<String>) {
    let sip_path = case.with_ext("sip");
    let text = match std::fs::read(&sip_path) {
        Ok(b) => match String::from_utf8(b) {
            Ok(t) => t,
            Err(_) => {
                problems.push(format!(
                    "{}.sip: not UTF-8 (write raw bytes as <HEX:xx> markers)",
                    case.name
                ));
                return;
            }
        },
        Err(e) => {
            problems.push(format!("{}.sip: {e}", case.name));
            return;
        }
    };
    let data = match expand(strip_comments(&text)) {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("{}.sip: {e}", case.name));
            return;
        }
    };
    if data.is_empty() {
        problems.push(format!("{}.sip: no message after the comments", case.name));
        return;
    }

    let outcome: Outcome = match catch_unwind(AssertUnwindSafe(|| golden::run(&data, case.side))) {
        Ok(o) => o,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            problems.push(format!("{}.sip: the edge panicked: {why}", case.name));
            return;
        }
    };

    // Nothing malformed reaches the other side, whatever the committed files say.
    let known = KNOWN_MALFORMED.iter().find(|(name, _)| *name == case.name);
    let mut malformed = false;
    for (k, bytes) in outcome.forwarded.iter().enumerate() {
        if let Err(why) = Message::parse(Bytes::copy_from_slice(bytes), &REPARSE_LIMITS) {
            malformed = true;
            let report = format!(
                "{}.sip: forwarded message #{} does not re-parse ({why:?}):\n{}",
                case.name,
                k + 1,
                normalise(bytes, &[])
            );
            match known {
                Some((_, defect)) => eprintln!("known defect: {defect}\n{report}"),
                None => problems.push(report),
            }
        }
    }
    if let (Some((_, defect)), false) = (known, malformed) {
        problems.push(format!(
            "{}.sip: listed in KNOWN_MALFORMED ({defect}), but everything it forwards now \
             re-parses: remove the entry",
            case.name
        ));
    }
    let forwarding = outcome
        .events
        .iter()
        .filter(|e| *e == "forward" || e.starts_with("to-flow "))
        .count();
    if forwarding != outcome.forwarded.len() {
        problems.push(format!(
            "{}.sip: {forwarding} forwarding events but {} forwarded messages",
            case.name,
            outcome.forwarded.len()
        ));
    }

    let mut events = outcome.events.join("\n");
    events.push('\n');
    check_file(&case.with_ext("expected"), Some(&events), update, problems);

    let dialogs = dialogs_of(&outcome.forwarded);
    let forwarded =
        (!outcome.forwarded.is_empty()).then(|| normalise(&outcome.forwarded.concat(), &dialogs));
    check_file(
        &case.with_ext("forwarded"),
        forwarded.as_deref(),
        update,
        problems,
    );
}

#[test]
fn golden_files() {
    let update = updating();
    let mut problems = Vec::new();
    let cases = collect(&mut problems);
    for case in &cases {
        run_case(case, update, &mut problems);
    }
    for (name, _) in KNOWN_MALFORMED {
        if !cases.iter().any(|c| c.name == *name) {
            problems.push(format!("KNOWN_MALFORMED names {name}, which is not a case"));
        }
    }
    if cases.len() < MIN_CASES {
        problems.push(format!(
            "only {} golden cases; at least {MIN_CASES} are required",
            cases.len()
        ));
    }
    assert!(
        problems.is_empty(),
        "{} golden problem(s) in tests/golden (see tests/golden/README.md):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

#[test]
fn markers_expand_and_normalise_back() {
    let text = "A<LF>B<CR>C<NUL><HEX:7f><CRLF><BODY:3><sip:x>\nbranch=z9hG4bKse0123456789abcdef;ftok=<FTOK:1>\n";
    let bytes = expand(text).unwrap();
    let tok = golden::token(1);
    assert_eq!(
        bytes,
        format!("A\nB\rC\0\x7f\r\nxxx<sip:x>\r\nbranch=z9hG4bKse0123456789abcdef;ftok={tok}\r\n")
            .into_bytes()
    );
    assert_eq!(
        normalise(&bytes, &[]),
        "A<LF>B<CR>C<NUL><HEX:7f>\nxxx<sip:x>\nbranch=z9hG4bKse<BRANCH>;ftok=<FTOK:1>\n"
    );
    let rr = "Record-Route: <sip:<RTOK:o:1:c@h:t1>@h;lr>, <sip:<PTOK:2>@h;lr>\n";
    let bytes = expand(rr).unwrap();
    assert_eq!(
        normalise(&bytes, &[("c@h".into(), "t1".into())]),
        rr,
        "dialog and Path tokens round trip"
    );
    assert!(expand("<HEX:zz>").is_err());
    assert!(expand("a\rb").is_err());
    assert_eq!(
        strip_comments("# one\n#\n# two\nX\n# not a comment\n"),
        "X\n# not a comment\n"
    );
    assert_eq!(number_of("07-invite-sdp"), Some("07"));
    assert_eq!(number_of("7-x"), None);
    assert_eq!(number_of("07-Invite"), None);
}
