//! Property tests of the STL reader and the CSV formatter.

use std::io::Cursor;

use machinaftp::stl::{self, Facet, csv::push_fixed4};
use proptest::prelude::*;

/// C's `printf("%.4f")`, the definition the formatter must meet (an independent implementation).
fn c_printf(v: f32) -> String {
    let mut buf = [0u8; 128];
    // SAFETY: %.4f of any float32 is at most 46 bytes; snprintf never writes past the size given.
    let n = unsafe { libc::snprintf(buf.as_mut_ptr().cast(), buf.len(), c"%.4f".as_ptr(), f64::from(v)) };
    String::from_utf8(buf[..n as usize].to_vec()).unwrap()
}

fn ours(v: f32) -> String {
    let mut out = Vec::new();
    push_fixed4(&mut out, v);
    String::from_utf8(out).unwrap()
}

fn finite_f32() -> impl Strategy<Value = f32> {
    any::<u32>().prop_map(f32::from_bits).prop_filter("finite", |v| v.is_finite())
}

/// Values whose exact product with 10^4 ends in .5: odd multiples of 1/32 (see csv.rs), and the
/// floats just beside them.
fn ties() -> impl Strategy<Value = f32> {
    (0u32..(1 << 24), -1i32..=1, any::<bool>()).prop_map(|(k, nudge, neg)| {
        let v = (2 * k + 1) as f32 / 32.0;
        let v = f32::from_bits((v.to_bits() as i32 + nudge) as u32);
        if neg { -v } else { v }
    })
}

fn subnormal() -> impl Strategy<Value = f32> {
    (1u32..0x80_0000, any::<bool>()).prop_map(|(m, neg)| f32::from_bits(m | if neg { 1 << 31 } else { 0 }))
}

fn coord() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -1e4f32..1e4,
        1 => finite_f32(),
        1 => subnormal(),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
    ]
}

fn mesh() -> impl Strategy<Value = Vec<Facet>> {
    prop::collection::vec(prop::array::uniform3(prop::array::uniform3(coord())), 0..40)
}

fn read_all(bytes: Vec<u8>) -> Result<Vec<Facet>, stl::StlError> {
    let mut got = Vec::new();
    stl::read(Cursor::new(bytes), |f| {
        got.push(*f);
        Ok(())
    })?;
    Ok(got)
}

fn binary(facets: &[Facet], header: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 80];
    v[..header.len()].copy_from_slice(header);
    v.extend_from_slice(&(facets.len() as u32).to_le_bytes());
    for f in facets {
        v.extend_from_slice(&[0u8; 12]);
        for c in f.iter().flatten() {
            v.extend_from_slice(&c.to_le_bytes());
        }
        v.extend_from_slice(&[0x12, 0x34]);
    }
    v
}

/// How an ASCII file is spelled: every choice must read back to the same values.
#[derive(Debug, Clone)]
struct Style {
    upper: Vec<bool>,
    newline: &'static str,
    indent: &'static str,
    notation: u8,
    plus: bool,
    drop_leading_zero: bool,
    final_newline: bool,
    bom: bool,
}

fn style() -> impl Strategy<Value = Style> {
    (
        prop::collection::vec(any::<bool>(), 8),
        prop::sample::select(vec!["\n", "\r\n", "\r"]),
        prop::sample::select(vec!["", " ", "\t", "  \t "]),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(upper, newline, indent, notation, plus, drop_leading_zero, final_newline, bom)| Style {
            upper,
            newline,
            indent,
            notation,
            plus,
            drop_leading_zero,
            final_newline,
            bom,
        })
}

fn number(v: f32, s: &Style) -> String {
    // Shortest round-trip forms: Rust's Display and LowerExp/UpperExp both parse back exactly.
    let mut t = match s.notation {
        0 => format!("{v}"),
        1 => format!("{v:e}"),
        _ => format!("{v:E}"),
    };
    if s.drop_leading_zero && t.starts_with("0.") {
        t.remove(0);
    }
    if s.plus && !t.starts_with('-') {
        t.insert(0, '+');
    }
    t
}

fn ascii(facets: &[Facet], s: &Style) -> Vec<u8> {
    let kw = |i: usize, w: &str| {
        if s.upper[i] { w.to_uppercase() } else { w.to_owned() }
    };
    let nl = s.newline;
    let mut t = String::new();
    if s.bom {
        t.push('\u{feff}');
    }
    t += &format!("{}{} name with spaces{nl}", s.indent, kw(0, "solid"));
    for f in facets {
        t += &format!("{}{} {} 0 0 1{nl}", s.indent, kw(1, "facet"), kw(2, "normal"));
        t += &format!("{}{} {}{nl}", s.indent, kw(3, "outer"), kw(3, "loop"));
        for v in f {
            t += &format!(
                "{}{}\t{} {}  {}{nl}",
                s.indent,
                kw(4, "vertex"),
                number(v[0], s),
                number(v[1], s),
                number(v[2], s)
            );
        }
        t += &format!("{}{}{nl}{}{}{nl}", s.indent, kw(5, "endloop"), s.indent, kw(6, "endfacet"));
    }
    t += &kw(7, "endsolid");
    t += " name with spaces";
    if s.final_newline {
        t += nl;
    }
    t.into_bytes()
}

fn same_bits(a: &[Facet], b: &[Facet]) -> bool {
    a.len() == b.len()
        && a.iter().flatten().flatten().zip(b.iter().flatten().flatten()).all(|(x, y)| x.to_bits() == y.to_bits())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn formatter_matches_c_on_any_float(v in finite_f32()) {
        prop_assert_eq!(ours(v), c_printf(v));
    }

    #[test]
    fn formatter_matches_c_on_ties(v in ties()) {
        prop_assert_eq!(ours(v), c_printf(v));
    }

    #[test]
    fn formatter_matches_c_on_subnormals(v in subnormal()) {
        prop_assert_eq!(ours(v), c_printf(v));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn binary_meshes_read_back_exactly(m in mesh(), solid_header in any::<bool>()) {
        let header: &[u8] = if solid_header { b"solid looks like ascii" } else { b"" };
        let got = read_all(binary(&m, header)).unwrap();
        prop_assert!(same_bits(&got, &m));
    }

    #[test]
    fn ascii_meshes_read_back_exactly(m in mesh(), s in style()) {
        let got = read_all(ascii(&m, &s)).unwrap();
        prop_assert!(same_bits(&got, &m), "{:?}", s);
    }

    #[test]
    fn reader_never_panics_on_mangled_files(m in mesh(), s in style(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = ascii(&m, &s);
        let i = cut.index(bytes.len().max(1));
        if i < bytes.len() {
            bytes[i] = byte;
        }
        let _ = read_all(bytes.clone());
        bytes.truncate(i);
        let _ = read_all(bytes);
    }
}
