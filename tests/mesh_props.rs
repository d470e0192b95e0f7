//! Property tests of the mesh facts (`machinaftp inspect`): encodings, translation, winding,
//! closed polyhedra.

use std::collections::HashMap;
use std::io::Cursor;

use machinaftp::stl::mesh::{Inspector, MeshFacts};
use machinaftp::stl::{self, Facet, Vertex};
use proptest::prelude::*;

fn facts_of(bytes: Vec<u8>) -> MeshFacts {
    let mut ins = Inspector::new();
    let summary = stl::read_with_normals(Cursor::new(bytes), |n, f| {
        ins.facet(n, f);
        Ok(())
    })
    .unwrap();
    ins.finish(summary.solids)
}

fn binary(m: &[(Vertex, Facet)]) -> Vec<u8> {
    let mut v = vec![0u8; 80];
    v.extend_from_slice(&(m.len() as u32).to_le_bytes());
    for (n, f) in m {
        for c in n.iter().chain(f.iter().flatten()) {
            v.extend_from_slice(&c.to_le_bytes());
        }
        v.extend_from_slice(&[0, 0]);
    }
    v
}

fn ascii(m: &[(Vertex, Facet)]) -> Vec<u8> {
    // Rust's Display of an f32 reads back to the same bits.
    let mut t = String::from("solid s\n");
    for (n, f) in m {
        t += &format!("facet normal {} {} {}\nouter loop\n", n[0], n[1], n[2]);
        for v in f {
            t += &format!("vertex {} {} {}\n", v[0], v[1], v[2]);
        }
        t += "endloop\nendfacet\n";
    }
    (t + "endsolid s\n").into_bytes()
}

fn normal_of(f: &Facet) -> Vertex {
    let d = |a: Vertex, b: Vertex| [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let (u, v) = (d(f[0], f[1]), d(f[0], f[2]));
    [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]
}

/// Facets on small whole coordinates (translations of them stay exact in float32), with
/// normals that sometimes agree with the winding, sometimes not, sometimes are zero.
fn mesh() -> impl Strategy<Value = Vec<(Vertex, Facet)>> {
    let corner = prop::array::uniform3((-50i32..50).prop_map(|c| c as f32));
    prop::collection::vec((prop::array::uniform3(corner), 0u8..3), 0..60).prop_map(|fs| {
        fs.into_iter()
            .map(|(f, how)| {
                let n = normal_of(&f);
                let n = match how {
                    0 => n,
                    1 => n.map(|c| -c),
                    _ => [0.0; 3],
                };
                (n, f)
            })
            .collect()
    })
}

/// A closed star-shaped polyhedron: an octahedron whose faces are split in four `depth` times,
/// each vertex pushed out to its own random distance from the centre. Faces wind outward.
fn polyhedron(radii: &[f32], depth: u32) -> Vec<(Vertex, Facet)> {
    let mut dirs: Vec<[f64; 3]> =
        vec![[1., 0., 0.], [-1., 0., 0.], [0., 1., 0.], [0., -1., 0.], [0., 0., 1.], [0., 0., -1.]];
    let mut faces: Vec<[usize; 3]> =
        vec![[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]];
    for _ in 0..depth {
        let mut mid: HashMap<(usize, usize), usize> = HashMap::new();
        let mut split = Vec::new();
        for [a, b, c] in faces {
            let mut m = |p: usize, q: usize| {
                *mid.entry((p.min(q), p.max(q))).or_insert_with(|| {
                    let s = [0, 1, 2].map(|k| dirs[p][k] + dirs[q][k]);
                    let l = (s[0] * s[0] + s[1] * s[1] + s[2] * s[2]).sqrt();
                    dirs.push(s.map(|x| x / l));
                    dirs.len() - 1
                })
            };
            let (ab, bc, ca) = (m(a, b), m(b, c), m(c, a));
            split.extend([[a, ab, ca], [ab, b, bc], [ca, bc, c], [ab, bc, ca]]);
        }
        faces = split;
    }
    let points: Vec<Vertex> =
        dirs.iter().enumerate().map(|(i, d)| d.map(|x| (x * f64::from(radii[i % radii.len()])) as f32)).collect();
    faces
        .iter()
        .map(|[a, b, c]| {
            let f = [points[*a], points[*b], points[*c]];
            (normal_of(&f), f)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn binary_and_ascii_encodings_have_the_same_facts_and_digest(m in mesh()) {
        prop_assert_eq!(facts_of(binary(&m)), facts_of(ascii(&m)));
    }

    #[test]
    fn a_translated_copy_has_the_same_area_volume_and_size(m in mesh(), by in prop::array::uniform3(-1000i32..1000)) {
        let moved: Vec<_> = m.iter().map(|(n, f)| (*n, f.map(|v| [0, 1, 2].map(|k| v[k] + by[k] as f32)))).collect();
        let (a, b) = (facts_of(binary(&m)), facts_of(binary(&moved)));
        prop_assert_eq!(a.area, b.area);
        prop_assert_eq!(a.volume, b.volume);
        prop_assert_eq!(a.bbox.map(|x| x.size), b.bbox.map(|x| x.size));
        prop_assert_eq!((a.closed, a.boundary_edges, a.distinct_vertices), (b.closed, b.boundary_edges, b.distinct_vertices));
        if !m.is_empty() && by != [0, 0, 0] {
            prop_assert_ne!(a.geometry_blake3, b.geometry_blake3);
        }
    }

    #[test]
    fn a_random_star_shaped_polyhedron_is_closed_and_flipping_a_facet_opens_it(
        radii in prop::collection::vec(1.0f32..10.0, 1..40),
        depth in 0u32..3,
        which in any::<prop::sample::Index>(),
    ) {
        let p = polyhedron(&radii, depth);
        let whole = facts_of(binary(&p));
        prop_assert!(whole.closed, "{:?}", whole);
        prop_assert_eq!(whole.facets, 8 * 4u64.pow(depth));
        prop_assert_eq!(whole.distinct_vertices, 2 + 4 * 4u64.pow(depth));
        prop_assert!(whole.volume > 0.0);
        prop_assert_eq!((whole.flipped_normals, whole.degenerate_facets), (0, 0));
        // Flip one facet's winding (its stored normal stays): the mesh opens along its three
        // edges, the normal disagrees, and its share of the volume changes sign.
        let i = which.index(p.len());
        let mut flipped = p.clone();
        flipped[i].1.swap(1, 2);
        let f = facts_of(binary(&flipped));
        prop_assert!(!f.closed);
        prop_assert_eq!((f.misoriented_edges, f.boundary_edges, f.flipped_normals), (3, 0, 1));
        let corner = whole.bbox.unwrap().min;
        let [a, b, c] = p[i].1.map(|v| [0, 1, 2].map(|k| f64::from(v[k]) - corner[k]));
        let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
        let w = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
        let n = [u[1] * w[2] - u[2] * w[1], u[2] * w[0] - u[0] * w[2], u[0] * w[1] - u[1] * w[0]];
        let share = (a[0] * n[0] + a[1] * n[1] + a[2] * n[2]) / 6.0;
        let expected = whole.volume - 2.0 * share;
        prop_assert!((f.volume - expected).abs() <= 1e-9 * whole.volume.abs().max(1.0), "{} vs {}", f.volume, expected);
        prop_assert_eq!(f.area, whole.area);
    }
}
