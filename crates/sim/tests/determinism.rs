//! A seed describes a run completely only if nothing the simulated cluster does depends on
//! a hash map's order: every process seeds its hash maps anew, so state walked in such an
//! order makes one seed run differently in another process (a sweep, then its replay).
//! This happened once: lock waiters woken in a hash map's order (about one process in
//! three ran seed 19 differently). The rule, checked here over the code the simulator
//! runs: a hash map or set is for lookups only, and says so where it is declared (on the
//! line, or the line above); what is
//! walked in order is a `BTreeMap`/`BTreeSet`. (The checkers, `sim/src/check`, judge a
//! finished history and may use what they like.)

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source folder") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            if !path.ends_with("check") {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn hash_maps_in_simulated_code_are_for_lookups_only() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for name in ["types", "storage", "raftstore", "txn", "placement", "sim"] {
        sources(&crates.join(name).join("src"), &mut files);
    }
    assert!(files.len() > 40, "found the sources: {}", files.len());
    let mut unmarked = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a readable source");
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let declares = line.contains("HashMap<") || line.contains("HashSet<");
            let above = n.checked_sub(1).map_or("", |i| lines[i]);
            let marked = line.contains("lookups only") || above.contains("lookups only");
            if declares && !marked {
                unmarked.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        unmarked.is_empty(),
        "hash maps the simulator runs, not marked `// lookups only` (walk a BTreeMap instead):\n{}",
        unmarked.join("\n")
    );
}
