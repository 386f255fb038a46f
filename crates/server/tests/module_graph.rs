//! No crate's modules form an import cycle: each file names (`crate::...`, `super::...`)
//! only modules of its crate that do not, through any chain, name it back. A part can
//! then be read, tested and replaced knowing everything it depends on, which a shared
//! context every handler reached into (`NodeContext`, before issue 21) did not allow.
//! The check lives with the server, whose modules were the tangle, and reads every crate
//! of the workspace.
//!
//! Unit tests (`#[cfg(test)] mod tests`) are not part of the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`grpc::pd`) → the file's text, without its unit tests.
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("a source folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                walk(root, &path, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(root).expect("under src").with_extension("");
            let mut name: Vec<String> =
                relative.components().map(|c| c.as_os_str().to_string_lossy().into()).collect();
            if name.last().is_some_and(|n| n == "mod") {
                name.pop();
            }
            let text = std::fs::read_to_string(&path).expect("a readable source");
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            out.insert(name.join("::"), text);
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The paths a file names after `prefix` (`crate::` or `super::`), braces expanded.
fn named_paths(text: &str, prefix: &str) -> Vec<String> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut paths = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let path: String = rest.chars().take_while(|&c| is_path_char(c)).collect();
        let after = &rest[path.len()..];
        if let Some(group) = after.strip_prefix('{') {
            let inner = &group[..group.find('}').expect("a closed use group")];
            for item in inner.split(',') {
                let item: String = item.trim().chars().take_while(|&c| is_path_char(c)).collect();
                paths.push(format!("{path}{item}"));
            }
        } else {
            paths.push(path);
        }
    }
    paths
}

/// The longest module that `path` starts with.
fn module_of(path: &str, known: &BTreeMap<String, String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|m| known.contains_key(m))
}

fn dependencies(known: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (name, text) in known {
        let parent = name.rsplit_once("::").map_or("", |(parent, _)| parent);
        let mut uses: BTreeSet<String> =
            named_paths(text, "crate::").iter().filter_map(|path| module_of(path, known)).collect();
        for path in named_paths(text, "super::") {
            let absolute = if parent.is_empty() { path } else { format!("{parent}::{path}") };
            uses.extend(module_of(&absolute, known));
        }
        uses.remove(name);
        graph.insert(name.clone(), uses);
    }
    graph
}

/// A cycle of the graph, if there is one, as the modules along it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_of_the_workspace_has_an_import_cycle() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crates folder");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(crates).expect("the crates folder") {
        let src = entry.expect("an entry").path().join("src");
        if !src.is_dir() {
            continue;
        }
        let name = src.parent().and_then(|c| c.file_name()).expect("a crate name");
        let name = name.to_string_lossy().into_owned();
        let known = modules(&src);
        let graph = dependencies(&known);
        if name == "server" {
            // The reader sees what the checker sees.
            assert!(known.len() > 25, "found the sources: {:?}", known.keys());
            assert!(graph["node"].contains("commands"), "node.rs assembles the storage layer");
            assert!(graph["grpc::tikv"].contains("grpc::batch"), "super:: paths count");
        }
        if let Some(found) = cycle(&graph) {
            panic!("import cycle among the modules of {name}: {}", found.join(" -> "));
        }
        checked.push(name);
    }
    for expected in ["placement", "server", "sim", "txn"] {
        assert!(checked.iter().any(|c| c == expected), "checked {expected}: {checked:?}");
    }
}

#[test]
fn a_cycle_is_found() {
    let known: BTreeMap<String, String> = [
        ("a".to_string(), "use crate::{b::Thing, c};".to_string()),
        ("b".to_string(), "fn f() { crate::c::g() }".to_string()),
        ("c".to_string(), "use crate::a::X;".to_string()),
    ]
    .into();
    let found = cycle(&dependencies(&known)).expect("a -> b -> c -> a");
    assert_eq!(found.first(), found.last());
    assert_eq!(found.len(), 4, "{found:?}");
}
