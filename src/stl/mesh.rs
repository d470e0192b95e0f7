//! What a mesh is, not only what its bytes are: facts computed while the facets stream by
//! (`machinaftp inspect`), and a geometry digest that is the same for the ASCII and binary
//! encodings of one mesh.
//!
//! The digest, area, volume and bounding box take constant memory. Telling whether the mesh is
//! closed needs its edges: a map of distinct vertices (about 40 bytes each, some 0.5 per facet)
//! and a list of every facet's edges (8 bytes each, 3 per facet, up to twice that while the list
//! grows), so 45 to 70 bytes per facet; 8 million facets take under 600 MiB.

use std::collections::hash_map::Entry;

use rustc_hash::FxHashMap;

use serde::Serialize;

use super::{Facet, Vertex};

/// The facts of one mesh. Field names are part of `inspect --json`'s schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshFacts {
    /// Facets (triangles).
    pub facets: u64,
    /// Distinct vertices: corners with the same three float32 values count once (-0 is 0).
    pub distinct_vertices: u64,
    /// Solids (ASCII files may hold several; binary ones hold one).
    pub solids: u64,
    /// The bounding box; `None` for a mesh without facets.
    pub bbox: Option<BBox>,
    /// Surface area.
    pub area: f64,
    /// Signed volume (divergence theorem): positive for a closed mesh whose facets wind
    /// counter-clockwise seen from outside.
    pub volume: f64,
    /// Every edge is shared by exactly two facets that run along it in opposite directions.
    pub closed: bool,
    /// Edges of one facet only.
    pub boundary_edges: u64,
    /// Edges of more than two facets.
    pub nonmanifold_edges: u64,
    /// Edges of two facets that run along it in the same direction (one of them is flipped).
    pub misoriented_edges: u64,
    /// Facets of zero area, or with a repeated vertex.
    pub degenerate_facets: u64,
    /// Facets whose stored normal (when not zero) points against their winding.
    pub flipped_normals: u64,
    /// BLAKE3 over every vertex's three float32 values, little-endian, in file order (hex).
    pub geometry_blake3: String,
}

// Messages carry facts and derive `Eq`; the facts' floats come from finite coordinates, and the
// round trip compares them with `MeshFacts::differences`, not with `==`.
impl Eq for MeshFacts {}

impl MeshFacts {
    /// What differs between two sets of facts, each field once with both values; empty if they
    /// agree. Counts and the digest must be equal; area, volume and the box agree to a relative
    /// 1e-9 (another implementation may sum in another order).
    pub fn differences(&self, theirs: &MeshFacts) -> Vec<String> {
        let mut out = Vec::new();
        let mut count = |name: &str, a: u64, b: u64| {
            if a != b {
                out.push(format!("{name} {a} here, {b} there"));
            }
        };
        count("facets", self.facets, theirs.facets);
        count("distinct vertices", self.distinct_vertices, theirs.distinct_vertices);
        count("solids", self.solids, theirs.solids);
        count("boundary edges", self.boundary_edges, theirs.boundary_edges);
        count("non-manifold edges", self.nonmanifold_edges, theirs.nonmanifold_edges);
        count("misoriented edges", self.misoriented_edges, theirs.misoriented_edges);
        count("degenerate facets", self.degenerate_facets, theirs.degenerate_facets);
        count("flipped normals", self.flipped_normals, theirs.flipped_normals);
        let near = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
        for (name, a, b) in [("area", self.area, theirs.area), ("volume", self.volume, theirs.volume)] {
            if !near(a, b) {
                out.push(format!("{name} {a} here, {b} there"));
            }
        }
        let corners = |b: &Option<BBox>| b.map(|b| [b.min, b.max].concat());
        match (corners(&self.bbox), corners(&theirs.bbox)) {
            (Some(a), Some(b)) if a.iter().zip(&b).all(|(x, y)| near(*x, *y)) => {}
            (None, None) => {}
            (a, b) => out.push(format!("bounding box {a:?} here, {b:?} there")),
        }
        if self.closed != theirs.closed {
            out.push(format!("closed {} here, {} there", self.closed, theirs.closed));
        }
        if self.geometry_blake3 != theirs.geometry_blake3 {
            out.push(format!("geometry BLAKE3 {} here, {} there", self.geometry_blake3, theirs.geometry_blake3));
        }
        out
    }
}

/// An axis-aligned box.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BBox {
    /// The smallest x, y and z.
    pub min: [f64; 3],
    /// The largest.
    pub max: [f64; 3],
    /// `max - min`.
    pub size: [f64; 3],
}

/// Vertex bytes gathered before they go to BLAKE3.
const DIGEST_BATCH: usize = 64 << 10;

/// Collects [`MeshFacts`] from facets in file order.
pub struct Inspector {
    facets: u64,
    digest: blake3::Hasher,
    /// Vertex bytes on their way to the digest: BLAKE3 takes them in large pieces much faster
    /// than 12 bytes at a time.
    pending: Vec<u8>,
    min: [f64; 3],
    max: [f64; 3],
    /// The first vertex: volume terms are summed relative to it (precision far from the
    /// origin), then moved to the bounding box's corner.
    origin: Option<[f64; 3]>,
    area2: f64,
    /// Σ (a - origin) · N and Σ N, N being each facet's (b - a) × (c - a).
    vol6: f64,
    normals: [f64; 3],
    // Fx hashing: these maps are the inspection's hot path, and their keys are not chosen by
    // anyone who could aim for collisions to any effect but a slower inspection of their own file.
    vertices: FxHashMap<[u32; 3], u32>,
    /// Every facet's edges as (lower vertex id, higher) packed in a `u64`: those running low to
    /// high, and those running high to low. Sorted and counted once at the end: appending is
    /// sequential, where a map of edges missed the cache on most of them (3 per facet), which
    /// made inspection 1.5 to 1.8 times slower.
    edges_up: Vec<u64>,
    edges_down: Vec<u64>,
    degenerate: u64,
    flipped: u64,
}

impl Default for Inspector {
    fn default() -> Self {
        Inspector {
            facets: 0,
            digest: blake3::Hasher::new(),
            pending: Vec::with_capacity(DIGEST_BATCH),
            min: [f64::INFINITY; 3],
            max: [f64::NEG_INFINITY; 3],
            origin: None,
            area2: 0.0,
            vol6: 0.0,
            normals: [0.0; 3],
            vertices: FxHashMap::default(),
            edges_up: Vec::new(),
            edges_down: Vec::new(),
            degenerate: 0,
            flipped: 0,
        }
    }
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(u: [f64; 3], v: [f64; 3]) -> [f64; 3] {
    [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]
}

fn dot(u: [f64; 3], v: [f64; 3]) -> f64 {
    u[0] * v[0] + u[1] * v[1] + u[2] * v[2]
}

fn wide(v: &Vertex) -> [f64; 3] {
    [f64::from(v[0]), f64::from(v[1]), f64::from(v[2])]
}

impl Inspector {
    /// A new, empty inspection.
    pub fn new() -> Self {
        Self::default()
    }

    /// One facet, with its stored normal.
    pub fn facet(&mut self, normal: &Vertex, f: &Facet) {
        self.facets += 1;
        for c in f.iter().flatten() {
            self.pending.extend_from_slice(&c.to_le_bytes());
        }
        if self.pending.len() >= DIGEST_BATCH {
            self.digest.update(&self.pending);
            self.pending.clear();
        }
        let [a, b, c] = [wide(&f[0]), wide(&f[1]), wide(&f[2])];
        for p in [a, b, c] {
            self.min = [0, 1, 2].map(|k| self.min[k].min(p[k]));
            self.max = [0, 1, 2].map(|k| self.max[k].max(p[k]));
        }
        let o = *self.origin.get_or_insert(a);
        let n = cross(sub(b, a), sub(c, a));
        let len = dot(n, n).sqrt();
        self.area2 += len;
        self.vol6 += dot(sub(a, o), n);
        self.normals = [0, 1, 2].map(|k| self.normals[k] + n[k]);
        let ids = f.map(|v| self.vertex_id(&v));
        if len == 0.0 || ids[0] == ids[1] || ids[1] == ids[2] || ids[0] == ids[2] {
            self.degenerate += 1;
        } else if dot(wide(normal), n) < 0.0 {
            self.flipped += 1;
        }
        for (p, q) in [(ids[0], ids[1]), (ids[1], ids[2]), (ids[2], ids[0])] {
            if p == q {
                continue;
            }
            let key = u64::from(p.min(q)) << 32 | u64::from(p.max(q));
            if p < q {
                self.edges_up.push(key);
            } else {
                self.edges_down.push(key);
            }
        }
    }

    fn vertex_id(&mut self, v: &Vertex) -> u32 {
        // -0 and 0 are one point.
        let key = v.map(|c| if c == 0.0 { 0 } else { c.to_bits() });
        let next = self.vertices.len() as u32;
        match self.vertices.entry(key) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => *e.insert(next),
        }
    }

    /// The facts, for a file of `solids` solids.
    pub fn finish(mut self, solids: u64) -> MeshFacts {
        self.digest.update(&self.pending);
        let (mut boundary, mut nonmanifold, mut misoriented) = (0, 0, 0);
        self.edges_up.sort_unstable();
        self.edges_down.sort_unstable();
        let (mut up, mut down) = (&self.edges_up[..], &self.edges_down[..]);
        // Each edge once, in order, with how many facets run along it either way.
        while let Some(&key) = [up.first(), down.first()].into_iter().flatten().min() {
            let ups = up.iter().take_while(|&&k| k == key).count();
            let downs = down.iter().take_while(|&&k| k == key).count();
            (up, down) = (&up[ups..], &down[downs..]);
            match ups + downs {
                1 => boundary += 1,
                2 if ups != 1 => misoriented += 1,
                2 => {}
                _ => nonmanifold += 1,
            }
        }
        let bbox = (self.facets > 0).then(|| BBox { min: self.min, max: self.max, size: sub(self.max, self.min) });
        // Moved from the first vertex to the box's corner: V(c) = (Σ(a-o)·N - (c-o)·ΣN) / 6.
        let volume = match (bbox, self.origin) {
            (Some(b), Some(o)) => (self.vol6 - dot(sub(b.min, o), self.normals)) / 6.0,
            _ => 0.0,
        };
        MeshFacts {
            facets: self.facets,
            distinct_vertices: self.vertices.len() as u64,
            solids,
            bbox,
            area: self.area2 / 2.0,
            volume,
            closed: self.facets > 0 && boundary == 0 && nonmanifold == 0 && misoriented == 0,
            boundary_edges: boundary,
            nonmanifold_edges: nonmanifold,
            misoriented_edges: misoriented,
            degenerate_facets: self.degenerate,
            flipped_normals: self.flipped,
            geometry_blake3: self.digest.finalize().to_hex().to_string(),
        }
    }
}

/// Reads a whole STL file and inspects it.
pub fn inspect(path: &std::path::Path) -> Result<MeshFacts, super::ConvertError> {
    let file = super::open_input(path)?;
    let mut ins = Inspector::new();
    let summary = super::read_with_normals(std::io::BufReader::with_capacity(1 << 16, file), |n, f| {
        ins.facet(n, f);
        Ok(())
    })
    .map_err(|source| super::ConvertError::Stl { path: path.to_path_buf(), source })?;
    Ok(ins.finish(summary.solids))
}

impl MeshFacts {
    /// One line for people: `23,840 facets, 62.0 x 41.5 x 12.0, closed, volume 14,213.6`.
    pub fn line(&self) -> String {
        if self.facets == 0 {
            // Neither open nor closed: there is no surface.
            return "0 facets: an empty mesh".to_owned();
        }
        let size = self.bbox.map_or_else(
            || "empty".to_owned(),
            |b| format!("{} x {} x {}", num(b.size[0], 1), num(b.size[1], 1), num(b.size[2], 1)),
        );
        let shape = if self.closed {
            "closed".to_owned()
        } else {
            let mut open = vec![format!("{} boundary edges", int(self.boundary_edges))];
            if self.nonmanifold_edges > 0 {
                open.push(format!("{} non-manifold", int(self.nonmanifold_edges)));
            }
            if self.misoriented_edges > 0 {
                open.push(format!("{} misoriented", int(self.misoriented_edges)));
            }
            format!("open ({})", open.join(", "))
        };
        format!(
            "{} facets, {size}, {shape}, area {}, volume {}",
            int(self.facets),
            num(self.area, 1),
            num(self.volume, 1)
        )
    }
}

/// An integer with thousands separators.
fn int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A number with `decimals` decimals and thousands separators.
fn num(x: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, x.abs());
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    let sign = if x < 0.0 && s.chars().any(|c| c.is_ascii_digit() && c != '0') { "-" } else { "" };
    let whole = whole.parse::<u64>().map_or_else(|_| whole.to_owned(), int);
    if frac.is_empty() { format!("{sign}{whole}") } else { format!("{sign}{whole}.{frac}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cube(offset: [f32; 3]) -> Vec<(Vertex, Facet)> {
        crate::stl::sample::cube(10.0, offset)
    }

    fn facts(facets: &[(Vertex, Facet)]) -> MeshFacts {
        let mut ins = Inspector::new();
        facets.iter().for_each(|(n, f)| ins.facet(n, f));
        ins.finish(1)
    }

    #[test]
    fn a_10_mm_cube_is_exact() {
        let f = facts(&cube([0.0; 3]));
        assert_eq!((f.facets, f.distinct_vertices), (12, 8));
        assert_eq!((f.area, f.volume), (600.0, 1000.0));
        assert!(f.closed, "{f:?}");
        assert_eq!((f.boundary_edges, f.nonmanifold_edges, f.misoriented_edges), (0, 0, 0));
        assert_eq!((f.degenerate_facets, f.flipped_normals), (0, 0));
        assert_eq!(f.bbox.unwrap().size, [10.0; 3]);
        assert_eq!(f.line(), "12 facets, 10.0 x 10.0 x 10.0, closed, area 600.0, volume 1,000.0");
    }

    #[test]
    fn far_from_the_origin_the_volume_keeps_its_precision() {
        let far = facts(&cube([1.0e6, -2.0e6, 3.0e5]));
        assert_eq!((far.area, far.volume), (600.0, 1000.0));
        assert_eq!(far.bbox.unwrap().min, [1.0e6, -2.0e6, 3.0e5]);
        assert_ne!(far.geometry_blake3, facts(&cube([0.0; 3])).geometry_blake3);
    }

    #[test]
    fn a_flipped_facet_opens_the_mesh_and_a_missing_one_leaves_a_boundary() {
        let mut c = cube([0.0; 3]);
        c[3].1.swap(1, 2);
        let f = facts(&c);
        assert!(!f.closed);
        assert_eq!(f.misoriented_edges, 3);
        assert_eq!(f.flipped_normals, 1, "its stored normal now points against its winding");
        // Its contribution to the volume changes sign: 1000 - 2 * (its share).
        assert!(f.volume < 1000.0, "{f:?}");
        let mut c = cube([0.0; 3]);
        c.pop();
        let f = facts(&c);
        assert_eq!((f.closed, f.boundary_edges), (false, 3));
        assert_eq!(f.area, 550.0);
    }

    #[test]
    fn degenerate_facets_and_zero_normals() {
        let z = [0.0f32; 3];
        let f = facts(&[(z, [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]), (z, [[1.0, 1.0, 1.0]; 3])]);
        assert_eq!(f.degenerate_facets, 2);
        assert_eq!(f.flipped_normals, 0);
        assert_eq!(f.area, 0.0);
        let empty = facts(&[]);
        assert!(!empty.closed && empty.bbox.is_none() && empty.volume == 0.0);
        assert_eq!(empty.line(), "0 facets: an empty mesh");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(int(1_234_567), "1,234,567");
        assert_eq!(num(14_213.64, 1), "14,213.6");
        assert_eq!(num(-0.04, 1), "0.0");
        assert_eq!(num(-1234.5, 1), "-1,234.5");
    }
}
