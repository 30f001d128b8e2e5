//! The library's modules depend one way (DESIGN §2): this reads `src/`, lists the `crate::X`
//! paths each top-level module names, and fails on an import cycle, so that the layering stays
//! true as the code changes. Comments are left out (an intra-doc link is not a dependency);
//! test code is not (a test module is compiled into the crate like the rest).
//!
//! `scripts/module-graph.sh` prints the graph, layer by layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level module a file under `src/` belongs to (`imap/fetch.rs` → `imap`); `None` for
/// the crate root and the binary, which are not modules of the library.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// `text` without `//` comments (doc comments included), so that `[`crate::x`]` in a doc does
/// not count. A `//` inside a string is cut too, which only ever drops text.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0 && !s.starts_with(|c: char| c.is_ascii_digit())).then(|| &s[..end])
}

/// The modules `code` names: `crate::x`, and each first name inside `crate::{x, y::z}`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `foldertrack_crate::`, not this crate
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start => {
                        if let Some(name) = ident_at(&group[j..]) {
                            out.insert(name.to_string());
                        }
                        start = false;
                    }
                    _ => {}
                }
            }
        } else if let Some(name) = ident_at(rest) {
            out.insert(name.to_string());
        }
    }
    out
}

fn collect(dir: &Path, root: &Path, graph: &mut Graph) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, root, graph);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let Some(module) = module_of(path.strip_prefix(root).unwrap()) else {
                continue;
            };
            let code = strip_comments(&std::fs::read_to_string(&path).unwrap());
            let deps = graph.entry(module.clone()).or_default();
            deps.extend(imports(&code).into_iter().filter(|d| *d != module));
        }
    }
}

/// Every top-level module of `src/` and the modules it imports.
fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g = Graph::new();
    collect(&src, &src, &mut g);
    g
}

/// A cycle through `at`, if one is reachable from it: the modules along it, first repeated last.
fn find_cycle(
    g: &Graph,
    at: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|m| m == at) {
        let mut cycle = path[i..].to_vec();
        cycle.push(at.to_string());
        return Some(cycle);
    }
    if done.contains(at) {
        return None;
    }
    path.push(at.to_string());
    for dep in g.get(at).into_iter().flatten() {
        if let Some(c) = find_cycle(g, dep, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(at.to_string());
    None
}

/// Modules by layer, bottom first: a leaf is in layer 0, any other module one above its
/// highest import. Only meaningful without cycles.
fn layers(g: &Graph) -> Vec<Vec<String>> {
    fn depth(g: &Graph, m: &str, memo: &mut BTreeMap<String, usize>) -> usize {
        if let Some(d) = memo.get(m) {
            return *d;
        }
        let d = g
            .get(m)
            .into_iter()
            .flatten()
            .map(|x| depth(g, x, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(m.to_string(), d);
        d
    }
    let mut memo = BTreeMap::new();
    let mut out: Vec<Vec<String>> = Vec::new();
    for m in g.keys() {
        let d = depth(g, m, &mut memo);
        if out.len() <= d {
            out.resize(d + 1, Vec::new());
        }
        out[d].push(m.clone());
    }
    out
}

#[test]
fn no_import_cycle_among_modules() {
    let g = graph();
    assert!(g.len() > 10, "src/ not found or not read: {g:?}");
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = find_cycle(&g, m, &mut Vec::new(), &mut done) {
            panic!(
                "import cycle among src/ modules: {} (DESIGN §2: modules depend one way; \
                 move the shared type down to a leaf, or pass a value in)",
                c.join(" → ")
            );
        }
    }
}

/// Every module appears in DESIGN §2's picture, so the picture does not fall behind the code.
#[test]
fn design_picture_names_every_module() {
    let design =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/DESIGN.md"))
            .unwrap();
    let start = design
        .find("<!-- module-graph -->")
        .expect("DESIGN §2 has the module graph");
    let end = design[start..]
        .find("```\n\n")
        .map_or(design.len(), |e| start + e);
    let picture = &design[start..end];
    let missing: Vec<_> = graph()
        .into_keys()
        .filter(|m| {
            !picture
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|w| w == m)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "DESIGN §2's module graph lacks {missing:?}"
    );
}

/// Prints the graph, top layer first (`scripts/module-graph.sh`).
#[test]
fn print_module_graph() {
    let g = graph();
    for (i, layer) in layers(&g).iter().enumerate().rev() {
        println!("layer {i}:");
        for m in layer {
            let deps: Vec<_> = g[m].iter().map(String::as_str).collect();
            println!(
                "  {m} → {}",
                if deps.is_empty() {
                    "(leaf)".to_string()
                } else {
                    deps.join(", ")
                }
            );
        }
    }
}

#[test]
fn imports_are_read_from_paths_and_groups() {
    let code = strip_comments(
        "use crate::a::B;\nuse crate::{c, d::{E, F}, g::H};\nlet x = crate::i::j(); // crate::k\nfoo_crate::l",
    );
    let got: Vec<_> = imports(&code).into_iter().collect();
    assert_eq!(got, ["a", "c", "d", "g", "i"]);
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut g = Graph::new();
    for (m, deps) in [("a", &["b"][..]), ("b", &["c"]), ("c", &["a"]), ("d", &[])] {
        g.insert(m.into(), deps.iter().map(|d| d.to_string()).collect());
    }
    let c = find_cycle(&g, "a", &mut Vec::new(), &mut BTreeSet::new());
    assert_eq!(c.unwrap(), ["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().clear();
    assert!(find_cycle(&g, "a", &mut Vec::new(), &mut BTreeSet::new()).is_none());
    assert_eq!(layers(&g), [vec!["c", "d"], vec!["b"], vec!["a"]]);
}
