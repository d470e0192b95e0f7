//! Binary STL: an 80-byte header, a little-endian u32 facet count, then 50 bytes per facet
//! (normal, three vertices, two attribute bytes that are ignored).

use std::io::{self, Read};

use super::{Facet, ReadSummary, StlError, Vertex};

const RECORD: usize = 50;
/// Records read per call: a multiple of the record size near 64 KiB.
const BATCH: usize = 1310;

/// Reads `count` facets from a stream positioned at the start of the file.
pub fn read<R: Read>(
    mut r: R,
    count: u32,
    each: &mut impl FnMut(&Vertex, &Facet) -> io::Result<()>,
) -> Result<ReadSummary, StlError> {
    let mut header = [0u8; 84];
    r.read_exact(&mut header)?;
    let mut buf = vec![0u8; RECORD * BATCH];
    let mut done: u64 = 0;
    let total = u64::from(count);
    while done < total {
        let n = (total - done).min(BATCH as u64) as usize;
        let chunk = &mut buf[..n * RECORD];
        r.read_exact(chunk).map_err(|e| match e.kind() {
            // detect() checked the size, so this means the file changed under us.
            io::ErrorKind::UnexpectedEof => StlError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("binary STL ended at facet {} of {count} (was the file truncated while being read?)", done + 1),
            )),
            _ => StlError::Io(e),
        })?;
        for rec in chunk.chunks_exact(RECORD) {
            done += 1;
            let mut facet: Facet = [[0.0; 3]; 3];
            for (k, corner) in facet.iter_mut().enumerate() {
                for (c, coord) in corner.iter_mut().enumerate() {
                    let at = 12 + 12 * k + 4 * c;
                    *coord = f32::from_le_bytes([rec[at], rec[at + 1], rec[at + 2], rec[at + 3]]);
                    if !coord.is_finite() {
                        return Err(StlError::NonFinite {
                            facet: done,
                            vertex: k as u8 + 1,
                            value: *coord,
                            line: None,
                        });
                    }
                }
            }
            let f = |at: usize| f32::from_le_bytes([rec[at], rec[at + 1], rec[at + 2], rec[at + 3]]);
            each(&[f(0), f(4), f(8)], &facet)?;
        }
    }
    Ok(ReadSummary { facets: total, solids: 1, ..ReadSummary::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn file(facets: &[[f32; 12]]) -> Vec<u8> {
        let mut v = vec![b's'; 80];
        v.extend_from_slice(&(facets.len() as u32).to_le_bytes());
        for f in facets {
            for x in f {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v.extend_from_slice(&[0xAB, 0xCD]); // attribute bytes are ignored
        }
        v
    }

    #[test]
    fn reads_vertices_and_skips_normal_and_attributes() {
        let data = file(&[[9.0, 9.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, -0.0]]);
        let mut got = Vec::new();
        let s = read(Cursor::new(data), 1, &mut |_, f| {
            got.push(*f);
            Ok(())
        })
        .unwrap();
        assert_eq!(s.facets, 1);
        assert_eq!(got, vec![[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, -0.0]]]);
    }

    #[test]
    fn nan_names_the_facet_and_vertex() {
        let ok = [0.0; 12];
        let mut bad = [0.0; 12];
        bad[7] = f32::NAN; // second vertex, y
        let e = read(Cursor::new(file(&[ok, bad])), 2, &mut |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().starts_with("facet 2: vertex 2 has a non-finite coordinate"), "{e}");
    }
}
