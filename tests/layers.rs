//! The house's shape, checked on every `make test`: no two source files
//! import each other, the chat core names no transport, token or flag, the
//! queue and the peer name no chat type, and every file reads in one
//! sitting. An import is a `use` (braces expanded) or a `crate::`/`super::`
//! path in code, resolved to the deepest module file that exists; a module
//! naming what it contains (its children) is containment, not an import.
//! The library's files only: `main.rs` and `bench/` are the binary's.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Lines a file may have before its tests.
const MAX_LINES: usize = 520;

/// Every hand-written source file, by module path (`chat::room`).
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix("src")
                .expect("under src")
                .to_string_lossy()
                .into_owned();
            if rel.starts_with("proto") || rel.starts_with("bench") {
                continue; // generated; a tool of the binary, not the library
            }
            if path.is_dir() {
                walk(&path, out);
            } else if rel.ends_with(".rs") && rel != "main.rs" {
                let module = rel
                    .trim_end_matches(".rs")
                    .trim_end_matches("/mod")
                    .replace('/', "::");
                let module = if module == "lib" {
                    String::new()
                } else {
                    module
                };
                out.insert(module, fs::read_to_string(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new("src"), &mut out);
    out
}

/// The text before a file's `#[cfg(test)] mod tests`.
fn before_tests(text: &str) -> &str {
    let mut at = 0;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map_or("", |l| l.trim());
        // An inline block; `mod tests;` declares a file of its own.
        if line.trim_end() == "#[cfg(test)]"
            && next.starts_with("mod tests")
            && !next.ends_with(';')
        {
            return &text[..at];
        }
        at += line.len();
    }
    text
}

/// The text with comments and string literals blanked.
fn code(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("//") {
            let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
            i = end;
        } else if text[i..].starts_with("/*") {
            let end = text[i..].find("*/").map_or(text.len(), |n| i + n + 2);
            i = end;
        } else if let Some(len) = char_literal(&text[i..]) {
            out.push_str("' '");
            i += len;
        } else if bytes[i] == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i = j + 1;
        } else {
            let c = text[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The length of the char literal `text` starts with (`'x'`, `'\\n'`), if
/// it starts with one rather than a lifetime.
fn char_literal(text: &str) -> Option<usize> {
    let mut chars = text.char_indices();
    if chars.next()?.1 != '\'' {
        return None;
    }
    let (_, first) = chars.next()?;
    if first == '\\' {
        let close = text[2..].find('\'')?;
        return Some(close + 3);
    }
    let (at, close) = chars.next()?;
    (close == '\'').then_some(at + 1)
}

/// The paths a `use` tree names, braces expanded: `a::{b, c::d}`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim_end_matches("::").trim();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let base = join(prefix, head);
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&base, &inner[start..], out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        out.push(join(prefix, path));
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (_, true) => prefix.to_owned(),
        _ => format!("{prefix}::{path}"),
    }
}

/// Every path a file names: its `use` trees and `crate::`/`super::` paths.
fn named_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let end = rest[at..].find(';').map_or(rest.len(), |n| at + n);
        if before.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
            expand("", &rest[at + 4..end], &mut paths);
        }
        rest = &rest[(at + 4).min(rest.len())..];
    }
    for root in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let path: String = rest[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            paths.push(path.trim_end_matches(':').to_owned());
            rest = &rest[at + root.len()..];
        }
    }
    paths
}

/// The module file a path names from `module`, if it is one of ours.
fn resolve(module: &str, path: &str, files: &BTreeMap<String, String>) -> Option<String> {
    let mut segments: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    let mut parts = path.split("::").peekable();
    match parts.peek().copied() {
        Some("crate") => {
            segments.clear();
            parts.next();
        }
        Some("super") => {
            while parts.peek() == Some(&"super") {
                parts.next();
                segments.pop();
            }
        }
        Some("self") => {
            parts.next();
        }
        _ => return None, // a crate's path, or a child named bare
    }
    let mut found = None;
    for part in parts {
        segments.push(part);
        let candidate = segments.join("::");
        if files.contains_key(&candidate) {
            found = Some(candidate);
        } else {
            break;
        }
    }
    found.or_else(|| {
        let base = segments.join("::");
        files.contains_key(&base).then_some(base)
    })
}

/// Every import between two files: `from` names `to`.
fn imports(files: &BTreeMap<String, String>) -> BTreeSet<(String, String)> {
    let mut edges = BTreeSet::new();
    for (module, text) in files {
        if module.is_empty() {
            continue; // lib.rs names what it contains
        }
        for path in named_paths(&code(before_tests(text))) {
            let Some(to) = resolve(module, &path, files) else {
                continue;
            };
            let contains = to.is_empty() || to.starts_with(&format!("{module}::"));
            if to != *module && !contains {
                edges.insert((module.clone(), to));
            }
        }
    }
    edges
}

#[test]
fn no_two_files_import_each_other() {
    let files = modules();
    let edges = imports(&files);
    let mut cycles = Vec::new();
    for (from, to) in &edges {
        // Reachable back from `to` to `from`?
        let mut seen = BTreeSet::new();
        let mut stack = vec![to.clone()];
        while let Some(at) = stack.pop() {
            if at == *from {
                cycles.push(format!("{from} -> {to} -> ... -> {from}"));
                break;
            }
            if seen.insert(at.clone()) {
                stack.extend(
                    edges
                        .iter()
                        .filter(|(a, _)| *a == at)
                        .map(|(_, b)| b.clone()),
                );
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    assert!(
        edges.len() > 100,
        "only {} imports seen: the scan is broken",
        edges.len()
    );
}

#[test]
fn the_chat_core_names_no_transport_token_or_flag() {
    let files = modules();
    let reaching: Vec<_> = imports(&files)
        .into_iter()
        .filter(|(from, to)| {
            let top = to.split("::").next().unwrap_or("");
            from.starts_with("chat") && ["config", "auth", "ws", "grpc", "server"].contains(&top)
        })
        .collect();
    assert!(reaching.is_empty(), "{reaching:?}");
}

#[test]
fn the_queue_and_the_peer_name_no_chat_type() {
    let files = modules();
    let reaching: Vec<_> = imports(&files)
        .into_iter()
        .filter(|(from, to)| {
            (from == "queue" || from.starts_with("peer")) && to.starts_with("chat")
        })
        .collect();
    assert!(reaching.is_empty(), "{reaching:?}");
}

#[test]
fn every_file_reads_in_one_sitting() {
    let long: Vec<_> = modules()
        .iter()
        .filter(|(module, _)| !module.ends_with("tests")) // a file of tests
        .map(|(module, text)| (module.clone(), before_tests(text).lines().count()))
        .filter(|(_, lines)| *lines > MAX_LINES)
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines before their tests: {long:?}"
    );
}
