//! `machinaftp stl2csv` on every file of `../shared/stl-corpus/` and on `../shared/cad_mesh.stl`:
//! the CSV equals the reference byte for byte, or the run fails with the expected kind of error
//! and leaves no file.

mod common;

use common::*;

/// Files that must fail, with a fragment of the error they must give.
const INVALID: &[(&str, &str)] = &[
    ("openscad_invalidvertex.stl", "line 89: `blah` is not a number"),
    ("openscad_toomanyvertices.stl", "more than 3 vertices"),
];

#[test]
fn every_corpus_file_matches_its_reference_or_fails_cleanly() {
    require_shared!();
    let corpus = shared("stl-corpus");
    let mut checked = 0;
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let path = entry.unwrap().path();
        let is_stl = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("stl"));
        if !is_stl {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let dir = tempdir();
        let out = dir.path().join("out.csv");
        let run = client(dir.path(), &["stl2csv", path.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        if let Some((_, fragment)) = INVALID.iter().find(|(n, _)| *n == name) {
            assert_eq!(run.code(), Some(5), "{name}: {run:?}");
            assert!(run.stderr.contains(fragment), "{name}: {run:?}");
            assert!(files_in(dir.path()).is_empty(), "{name}: nothing may be left behind");
        } else {
            assert_eq!(run.code(), Some(0), "{name}: {run:?}");
            let reference = path.with_extension("csv");
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&reference).unwrap(),
                "{name}: CSV differs from {}",
                reference.display()
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 15, "the corpus README lists 15 STL files");
}

#[test]
fn cad_mesh_to_stdout_and_unique() {
    require_shared!();
    let dir = tempdir();
    let mesh = shared("cad_mesh.stl");
    let run = client(dir.path(), &["stl2csv", mesh.to_str().unwrap()]);
    assert_eq!(run.code(), Some(0));
    let reference = std::fs::read_to_string(shared("cad_mesh.csv")).unwrap();
    assert_eq!(run.stdout + "\n", reference);
    let run = client(dir.path(), &["stl2csv", mesh.to_str().unwrap(), "--unique", "--header"]);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "x,y,z");
    assert_eq!(lines.len(), 1 + 7283, "the corpus README counts 7,283 distinct vertices");
    // First appearances, in order.
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<&str> = reference.lines().filter(|l| seen.insert(*l)).collect();
    assert_eq!(&lines[1..], &firsts[..]);
}

#[test]
fn not_stl_and_missing_input() {
    let dir = tempdir();
    let junk = dir.path().join("junk.stl");
    std::fs::write(&junk, vec![7u8; 1000]).unwrap();
    let out = dir.path().join("junk.csv");
    let run = client(dir.path(), &["stl2csv", junk.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(run.code(), Some(5), "{run:?}");
    assert!(run.stderr.contains("header says 117901063 facets") && run.stderr.contains("has 1000 bytes"), "{run:?}");
    assert_eq!(files_in(dir.path()), ["junk.stl"]);
    let run = client(dir.path(), &["stl2csv", "nope.stl"]);
    assert_eq!(run.code(), Some(2), "{run:?}");
    assert!(run.stderr.contains("nope.stl"), "{run:?}");
    let run = client(dir.path(), &["stl2csv", "."]);
    assert_eq!(run.code(), Some(2), "a directory cannot be read as a file: {run:?}");
    assert!(run.stderr.contains("directory"), "{run:?}");
}

#[test]
fn full_output_is_a_write_error_not_a_bad_input() {
    require_shared!();
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = std::process::Command::new(bin())
        .args(["stl2csv", shared("cad_mesh.stl").to_str().unwrap()])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("cannot write standard output") && stderr.contains("No space left"), "{stderr}");
}
