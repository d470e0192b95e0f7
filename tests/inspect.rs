//! `machinaftp inspect`: exact facts for a cube in both encodings, stable facts for the corpus
//! (snapshots: numpy-stl 4.1 agrees with these areas and volumes on the closed meshes, to its
//! float32 precision), a table for several files, and errors that name the file and line.

mod common;

use common::*;

/// A 10 mm cube, 12 facets wound outward, as binary and as ASCII STL.
fn cube(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let facets = machinaftp::stl::sample::cube(10.0, [0.0; 3]);
    let mut bin = vec![0u8; 80];
    bin.extend_from_slice(&12u32.to_le_bytes());
    let mut text = String::from("solid cube\n");
    for (n, f) in &facets {
        for c in n.iter().chain(f.iter().flatten()) {
            bin.extend_from_slice(&c.to_le_bytes());
        }
        bin.extend_from_slice(&[0, 0]);
        text += &format!("  facet normal {} {} {}\n    outer loop\n", n[0], n[1], n[2]);
        for v in f {
            text += &format!("      vertex {:e} {:e} {:e}\n", v[0], v[1], v[2]);
        }
        text += "    endloop\n  endfacet\n";
    }
    text += "endsolid cube\n";
    let (b, a) = (dir.join("cube-bin.stl"), dir.join("cube-ascii.stl"));
    std::fs::write(&b, bin).unwrap();
    std::fs::write(&a, text).unwrap();
    (b, a)
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[test]
fn a_10_mm_cube_is_exact_in_either_encoding() {
    let d = tempdir();
    let (bin, asc) = cube(d.path());
    let out = client(d.path(), &["inspect", "--json", bin.to_str().unwrap(), asc.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let rows = json_lines(&out.stdout);
    assert_eq!(rows.len(), 2, "{out:?}");
    for r in &rows {
        assert_eq!(r["facets"], 12, "{r}");
        assert_eq!(r["distinct_vertices"], 8, "{r}");
        assert_eq!(r["solids"], 1, "{r}");
        assert_eq!(r["area"], 600.0, "{r}");
        assert_eq!(r["volume"], 1000.0, "{r}");
        assert_eq!(r["closed"], true, "{r}");
        for k in ["boundary_edges", "nonmanifold_edges", "misoriented_edges", "degenerate_facets", "flipped_normals"] {
            assert_eq!(r[k], 0, "{k}: {r}");
        }
        assert_eq!(r["bbox"]["min"], serde_json::json!([0.0, 0.0, 0.0]), "{r}");
        assert_eq!(r["bbox"]["size"], serde_json::json!([10.0, 10.0, 10.0]), "{r}");
    }
    // The same geometry, so the same digest, from different bytes.
    assert_eq!(rows[0]["geometry_blake3"], rows[1]["geometry_blake3"]);
    assert_eq!(rows[0]["geometry_blake3"].as_str().unwrap().len(), 64);
    let one = client(d.path(), &["inspect", bin.to_str().unwrap()]);
    assert_eq!(one.code(), Some(0), "{one:?}");
    assert!(one.stdout.starts_with("12 facets, 10.0 x 10.0 x 10.0, closed, area 600.0, volume 1,000.0\n"), "{one:?}");
}

/// (file under ../shared, facets, distinct vertices, solids, closed, [boundary, non-manifold,
/// misoriented edges, degenerate facets, flipped normals], area, volume, geometry BLAKE3)
type Snapshot = (&'static str, u64, u64, u64, bool, [u64; 5], f64, f64, &'static str);

const SNAPSHOTS: &[Snapshot] = &[
    (
        "cad_mesh.stl",
        14296,
        7283,
        1,
        false,
        [268, 0, 0, 0, 0],
        254002.94500790507,
        -3547022.4280318003,
        "f77f37ca9305777db2cae7ba224138df3c14e6ae3529368591cd56c5302cf074",
    ),
    (
        "stl-corpus/assimp_Wuson.stl",
        3732,
        2117,
        1,
        false,
        [412, 0, 0, 0, 0],
        9.025803943985482,
        1.1012912972856406,
        "2a756b3e9b72c0f672943a3bc4d23b69384245dd5372963b20db0da6f79678d1",
    ),
    (
        "stl-corpus/assimp_sphereWithHole.stl",
        285,
        146,
        1,
        false,
        [9, 0, 0, 0, 0],
        27.418720728268777,
        13.603244970316014,
        "552af039a5007d4645dbd6f849e66739ed6607c859418c1e3935f1ad881eb527",
    ),
    (
        "stl-corpus/assimp_triangle_with_empty_solid.stl",
        1,
        3,
        2,
        false,
        [3, 0, 0, 0, 0],
        2.0,
        0.0,
        "8628c2dbaeeaafc00e80c46e68a51aca252065e5dd42a4c71fd72dc4f6ae1752",
    ),
    (
        "stl-corpus/nomstl_MOON_PRISM_POWER_dos.stl",
        3698,
        1857,
        1,
        true,
        [0, 0, 0, 0, 2],
        4068.357232098096,
        11458.5404432067,
        "ba6d2a29865d38b7fdba0e7279a852f234193acd03bbc51e0647eaf2afade286",
    ),
    (
        "stl-corpus/numpystl_CubeInvalidUnicode.stl",
        12,
        8,
        1,
        true,
        [0, 0, 0, 0, 0],
        24.0,
        8.0,
        "fe26c22ba404b4051a85b6fdfec852059699b001022d368b36b8d7243a909a0f",
    ),
    (
        "stl-corpus/numpystl_rear_case.stl",
        18808,
        9404,
        1,
        true,
        [0, 0, 0, 0, 0],
        19440.556272560414,
        38229.93927978907,
        "769a6b748b2477474630879a8dc732cd61808bda81114f584992a3ee3a0e9bb3",
    ),
    (
        "stl-corpus/openscad_import_bin_solid.stl",
        46,
        25,
        1,
        true,
        [0, 0, 0, 0, 0],
        10.489315319772272,
        2.871073697883142,
        "41ca71f00badf75cf7069345808636251a0fbd17a2200fbdd95fdebb9bae5009",
    ),
    (
        "stl-corpus/trimesh_empty.stl",
        0,
        0,
        1,
        false,
        [0, 0, 0, 0, 0],
        0.0,
        0.0,
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    ),
    (
        "stl-corpus/trimesh_multibody.stl",
        32,
        20,
        2,
        false,
        [0, 0, 12, 0, 0],
        0.36723894239334615,
        -0.0034568277312540282,
        "bd134ea2ffef2fb386f6d26b6344e2c2d2aec70f20194d0f22f7974527354a7d",
    ),
    (
        "stl-corpus/trimesh_stl_empty_bin.stl",
        0,
        0,
        1,
        false,
        [0, 0, 0, 0, 0],
        0.0,
        0.0,
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    ),
    (
        "stl-corpus/trimesh_two_objects_mixed_case_names.stl",
        24,
        16,
        2,
        true,
        [0, 0, 0, 0, 0],
        12.0,
        1.9999999999999998,
        "fbb017084bb34c1dac328c5bda787146b8bb64bc3c61b033c8dd6f5a2e95682e",
    ),
    (
        "stl-corpus/trimesh_ADIS16480.STL",
        7436,
        3672,
        1,
        true,
        [0, 0, 0, 0, 0],
        0.007353442112588102,
        2.819247020010174e-05,
        "76a5da7724ab9dcd416b80cab3e8f5525edd2a98199b7ac8a4a083b15413184c",
    ),
    (
        "stl-corpus/trimesh_counter.unitsmm.STL",
        83750,
        41837,
        1,
        true,
        [0, 0, 0, 0, 0],
        169951.38314539296,
        888809.012122571,
        "6addbb42be842f986e7224390965139f55ba5dc8e9d639ba18192093475c5ff8",
    ),
];

#[test]
fn the_corpus_gives_stable_facts() {
    require_shared!();
    let d = tempdir();
    let files: Vec<String> = SNAPSHOTS.iter().map(|s| shared(s.0).to_str().unwrap().to_owned()).collect();
    let mut args = vec!["inspect", "--json"];
    args.extend(files.iter().map(String::as_str));
    let out = client(d.path(), &args);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let rows = json_lines(&out.stdout);
    assert_eq!(rows.len(), SNAPSHOTS.len());
    let close = |got: &serde_json::Value, want: f64| (got.as_f64().unwrap() - want).abs() <= 1e-9 * want.abs().max(1.0);
    for (r, &(name, facets, vertices, solids, closed, edges, area, volume, digest)) in rows.iter().zip(SNAPSHOTS) {
        assert!(r["file"].as_str().unwrap().ends_with(name), "{r}");
        assert_eq!((r["facets"].as_u64(), r["distinct_vertices"].as_u64()), (Some(facets), Some(vertices)), "{name}");
        assert_eq!((r["solids"].as_u64(), r["closed"].as_bool()), (Some(solids), Some(closed)), "{name}");
        let got_edges =
            ["boundary_edges", "nonmanifold_edges", "misoriented_edges", "degenerate_facets", "flipped_normals"]
                .map(|k| r[k].as_u64().unwrap());
        assert_eq!(got_edges, edges, "{name}");
        assert!(close(&r["area"], area) && close(&r["volume"], volume), "{name}: {r}");
        assert_eq!(r["geometry_blake3"], digest, "{name}");
    }
}

#[test]
fn several_files_make_a_table_and_errors_name_the_file_and_line() {
    require_shared!();
    let d = tempdir();
    let (bin, _) = cube(d.path());
    let bad = shared("stl-corpus/openscad_invalidvertex.stl");
    let out = client(d.path(), &["inspect", bin.to_str().unwrap(), bad.to_str().unwrap(), "missing.stl"]);
    // The worst of the outcomes: a missing file is a usage error (2), invalid STL a CSV-kind one (5).
    assert_eq!(out.code(), Some(5), "{out:?}");
    let lines: Vec<_> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "a heading and the one good file: {out:?}");
    assert!(lines[0].starts_with("file") && lines[0].contains("geometry BLAKE3"), "{out:?}");
    assert!(
        lines[1].contains("cube-bin.stl") && lines[1].contains("10.0 x 10.0 x 10.0") && lines[1].contains("yes"),
        "{out:?}"
    );
    assert!(out.stderr.contains("openscad_invalidvertex.stl: line 89: `blah` is not a number"), "{out:?}");
    assert!(out.stderr.contains("missing.stl"), "{out:?}");
}
