//! Functions one screen long (issue 14): no non-test function in `src/` over 120 lines, so a
//! long one is split by responsibility when it is written, not found later in review.
//!
//! A function is counted from its `fn` line to the closing brace at the same indentation;
//! everything after a `#[cfg(test)]` line of a file is test code and is not counted.

use std::path::{Path, PathBuf};

const MAX_LINES: usize = 120;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `(name, first line, length)` of each function of `text` before its `#[cfg(test)]`.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .iter()
        .position(|l| l.trim() == "#[cfg(test)]")
        .unwrap_or(lines.len());
    let mut out = Vec::new();
    for (i, l) in lines[..end].iter().enumerate() {
        let t = l.trim_start();
        let indent = l.len() - t.len();
        let head = t
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("async ");
        let Some(rest) = head.strip_prefix("fn ") else {
            continue;
        };
        if l.trim_end().ends_with(';') {
            continue; // a trait method without a body
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{}}}", " ".repeat(indent));
        let len = lines[i + 1..end]
            .iter()
            .position(|x| x.starts_with(&close) && x.len() - x.trim_start().len() == indent)
            .map_or(0, |j| j + 2);
        out.push((name, i + 1, len));
    }
    out
}

#[test]
fn no_function_in_src_is_longer_than_one_screen() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 20, "the scan found the sources");
    let mut long = Vec::new();
    let mut counted = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (name, line, len) in functions(&text) {
            counted += 1;
            if len > MAX_LINES {
                long.push(format!("{}:{line} {name}: {len} lines", f.display()));
            }
        }
    }
    assert!(
        counted > 300,
        "only {counted} functions found: the scan is broken"
    );
    assert!(
        long.is_empty(),
        "functions over {MAX_LINES} lines (split them by responsibility):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_scan_measures_a_function_from_fn_to_its_closing_brace() {
    let text = "fn a() {\n    x();\n}\n\n    pub async fn b(\n        y: u8,\n    ) {\n        {\n        }\n    }\n#[cfg(test)]\nfn c() {\n}\n";
    assert_eq!(
        functions(text),
        vec![("a".into(), 1, 3), ("b".into(), 5, 6)]
    );
}
