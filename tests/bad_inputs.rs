//! Every file in tests/bad_inputs/ is a model a user could write by mistake.
//! Each must fail to compile (or warn) with a rendered message, snapshotted:
//! file:line:col, the source underlined, what was expected, and a hint.

use resnetc::front::compile_file;
use std::path::Path;

fn render(path: &Path) -> (bool, String) {
    match compile_file(path) {
        Ok(c) => (
            true,
            c.warnings
                .iter()
                .map(|w| w.render_plain())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Err(e) => (false, e.render_plain()),
    }
}

#[test]
fn bad_inputs_give_clear_diagnostics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_inputs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/bad_inputs exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "res"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 25,
        "expected the whole corpus, found {}",
        files.len()
    );
    // Snapshots name files relative to the crate so they do not depend on
    // where the repository is checked out.
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).expect("cd to crate");
    let mut problems = Vec::new();
    for abs in files {
        let rel = abs
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .expect("inside crate")
            .to_path_buf();
        let name = rel
            .file_stem()
            .expect("file name")
            .to_string_lossy()
            .to_string();
        let (ok, text) = render(&rel);
        if name == "unused_value" {
            if !ok || !text.contains("unused value `branch`") {
                problems.push(format!(
                    "{name}: expected only a warning about `branch`:\n{text}"
                ));
            }
        } else if ok {
            problems.push(format!("{name}: compiled, expected an error"));
        } else if !text.contains(&format!("{}:", rel.display())) || !text.contains("help:") {
            problems.push(format!("{name}: no file:line:col or no hint in\n{text}"));
        }
        insta::assert_snapshot!(name, text);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
