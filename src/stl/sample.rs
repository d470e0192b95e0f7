//! A built-in sample mesh, so the demo needs no download: a torus as binary STL, written
//! facet by facet (nothing is built in memory).

use std::f32::consts::TAU;
use std::io::{self, Write};

/// Rings around the torus's main circle.
pub const MAJOR_SEGMENTS: u32 = 96;
/// Segments around its tube.
pub const MINOR_SEGMENTS: u32 = 48;

/// Facets in the sample: two triangles per quad.
pub const fn facet_count() -> u32 {
    MAJOR_SEGMENTS * MINOR_SEGMENTS * 2
}

/// Size of the sample file in bytes.
pub const fn file_size() -> u64 {
    84 + 50 * facet_count() as u64
}

fn point(i: u32, j: u32) -> [f32; 3] {
    let (major, minor) = (40.0_f32, 12.5_f32);
    let u = TAU * (i % MAJOR_SEGMENTS) as f32 / MAJOR_SEGMENTS as f32;
    let v = TAU * (j % MINOR_SEGMENTS) as f32 / MINOR_SEGMENTS as f32;
    let r = major + minor * v.cos();
    [r * u.cos(), r * u.sin(), minor * v.sin()]
}

fn normal(a: [f32; 3], b: [f32; 3], c: [f32; 3]) -> [f32; 3] {
    let (u, v) = ([b[0] - a[0], b[1] - a[1], b[2] - a[2]], [c[0] - a[0], c[1] - a[1], c[2] - a[2]]);
    let n = [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]];
    let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    if len > 0.0 { [n[0] / len, n[1] / len, n[2] / len] } else { [0.0; 3] }
}

/// Writes the sample torus as binary STL.
pub fn write_torus<W: Write>(mut w: W) -> io::Result<()> {
    let mut header = [b' '; 80];
    let title = b"machinaftp sample mesh: torus R=40 r=12.5 (binary STL)";
    header[..title.len()].copy_from_slice(title);
    w.write_all(&header)?;
    w.write_all(&facet_count().to_le_bytes())?;
    for i in 0..MAJOR_SEGMENTS {
        for j in 0..MINOR_SEGMENTS {
            let (a, b, c, d) = (point(i, j), point(i + 1, j), point(i + 1, j + 1), point(i, j + 1));
            for tri in [[a, b, c], [a, c, d]] {
                let mut rec = [0u8; 50];
                let n = normal(tri[0], tri[1], tri[2]);
                for (k, v) in n.iter().chain(tri.iter().flatten()).enumerate() {
                    rec[k * 4..k * 4 + 4].copy_from_slice(&v.to_le_bytes());
                }
                w.write_all(&rec)?;
            }
        }
    }
    w.flush()
}

/// A cube of `edge` with its lowest corner at `offset`, as 12 facets (stored normal, corners)
/// wound counter-clockwise seen from outside: a mesh whose facts are known exactly (area
/// 6·edge², volume edge³, 8 distinct vertices, closed).
pub fn cube(edge: f32, offset: [f32; 3]) -> Vec<([f32; 3], [[f32; 3]; 3])> {
    let p = |x: f32, y: f32, z: f32| [x * edge + offset[0], y * edge + offset[1], z * edge + offset[2]];
    let quads = [
        ([0.0, 0.0, -1.0], [p(0., 0., 0.), p(0., 1., 0.), p(1., 1., 0.), p(1., 0., 0.)]),
        ([0.0, 0.0, 1.0], [p(0., 0., 1.), p(1., 0., 1.), p(1., 1., 1.), p(0., 1., 1.)]),
        ([0.0, -1.0, 0.0], [p(0., 0., 0.), p(1., 0., 0.), p(1., 0., 1.), p(0., 0., 1.)]),
        ([0.0, 1.0, 0.0], [p(0., 1., 0.), p(0., 1., 1.), p(1., 1., 1.), p(1., 1., 0.)]),
        ([-1.0, 0.0, 0.0], [p(0., 0., 0.), p(0., 0., 1.), p(0., 1., 1.), p(0., 1., 0.)]),
        ([1.0, 0.0, 0.0], [p(1., 0., 0.), p(1., 1., 0.), p(1., 1., 1.), p(1., 0., 1.)]),
    ];
    quads.iter().flat_map(|(n, q)| [(*n, [q[0], q[1], q[2]]), (*n, [q[0], q[2], q[3]])]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_has_the_announced_size_and_count() {
        let mut out = Vec::new();
        write_torus(&mut out).unwrap();
        assert_eq!(out.len() as u64, file_size());
        assert_eq!(u32::from_le_bytes(out[80..84].try_into().unwrap()), facet_count());
    }
}
