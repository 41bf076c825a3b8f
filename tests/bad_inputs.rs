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

/// Every broken weights or input file in tests/bad_inputs/loaders/ makes
/// `resnetc run` exit 1 with a message naming the file (snapshotted), and
/// leaves no output behind.
#[test]
fn broken_weights_and_inputs_fail_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/bad_inputs/loaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("loaders dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 15);
    let out_dir = tempfile::tempdir().expect("tempdir");
    for f in files {
        let rel = f.strip_prefix(root).expect("inside crate").to_path_buf();
        let name = rel
            .file_name()
            .expect("name")
            .to_string_lossy()
            .replace('.', "_");
        let weights_file = rel.extension().is_some_and(|e| e == "safetensors");
        let out = out_dir.path().join("y.npy");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_resnetc"));
        cmd.current_dir(root)
            .args([
                "run",
                "examples/cifar_resnet20.res",
                "--target",
                "ref",
                "--output",
            ])
            .arg(&out);
        if weights_file {
            cmd.arg("--weights")
                .arg(&rel)
                .args(["--input", "tests/fixtures/cifar_resnet20.input.npy"]);
        } else {
            cmd.args(["--random-weights", "0", "--input"]).arg(&rel);
        }
        // A wide terminal so messages are not wrapped differently per machine.
        let o = cmd
            .env("COLUMNS", "200")
            .env("NO_COLOR", "1")
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(&rel.display().to_string()),
            "{name}: message does not name the file:\n{err}"
        );
        assert!(!out.exists(), "{name}: output left behind");
        insta::assert_snapshot!(format!("loader_{name}"), err);
    }
}

/// A diagnostic on a very long line (a generated 10^6-stage pipeline is a
/// 10 MB line) gives its location in words: miette panics drawing such a
/// snippet.
#[test]
fn errors_on_huge_lines_render_without_a_snippet() {
    let text = format!(
        "model m(x: f32[N, 3, 8, 8]) {{\n    x{} |> nosuch()\n}}\n",
        " |> relu()".repeat(5000)
    );
    let e = resnetc::front::compile_source("long.res", &text, None).expect_err("unknown op");
    let shown = e.render_plain();
    assert!(
        shown.contains("unknown block or operator `nosuch`"),
        "{shown}"
    );
    assert!(shown.contains("long.res:2:"), "no location in\n{shown}");
    assert!(
        shown.len() < 2000,
        "the line was printed:\n{}",
        &shown[..200]
    );
}
