//! ASCII STL: a streaming tokenizer (any run of space, tab, CR or LF separates tokens; LF, CRLF
//! and a lone CR each end a line, for line numbers) and a strict parser of the grammar
//!
//! ```text
//! file  := solid*
//! solid := "solid" [name to end of line] facet* "endsolid" [name to end of line]
//! facet := "facet" "normal" num num num "outer" "loop" ("vertex" num num num){3} "endloop" "endfacet"
//! ```
//!
//! with keywords in any letter case. Numbers are parsed straight to f32 (correctly rounded); going
//! through f64 first would round twice and change coordinates. A file that ends after a complete
//! facet without its `endsolid` is accepted with a warning.

use std::io::{self, BufRead, Read};

use super::{Facet, ReadSummary, StlError, Vertex};

/// Longest token accepted; a longer run of non-space bytes is an error, which also bounds the
/// memory a hostile file can make the reader use.
const MAX_TOKEN: usize = 256;
const BOM: &[u8] = b"\xEF\xBB\xBF";

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Whether the stream begins, after an optional UTF-8 BOM and any whitespace, with `solid` in
/// any letter case. Reads only up to that word (however much whitespace comes first).
pub fn begins_with_solid<R: Read>(r: R) -> io::Result<bool> {
    let mut r = io::BufReader::with_capacity(8192, r);
    if r.fill_buf()?.starts_with(BOM) {
        r.consume(BOM.len());
    }
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        match buf.iter().position(|b| !is_space(*b)) {
            Some(i) => {
                r.consume(i);
                break;
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
    let mut word = [0u8; 5];
    match r.read_exact(&mut word) {
        Ok(()) => Ok(word.eq_ignore_ascii_case(b"solid")),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

struct Tokens<R> {
    r: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    line: u64,
    prev_cr: bool,
    tok: Vec<u8>,
    tok_line: u64,
}

impl<R: Read> Tokens<R> {
    fn new(r: R) -> Self {
        Tokens {
            r,
            buf: vec![0; 64 * 1024].into_boxed_slice(),
            pos: 0,
            len: 0,
            line: 1,
            prev_cr: false,
            tok: Vec::with_capacity(MAX_TOKEN),
            tok_line: 1,
        }
    }

    /// The next byte, or `None` at end of input.
    fn peek(&mut self) -> io::Result<Option<u8>> {
        if self.pos == self.len {
            self.len = loop {
                match self.r.read(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            self.pos = 0;
            if self.len == 0 {
                return Ok(None);
            }
        }
        Ok(Some(self.buf[self.pos]))
    }

    fn bump(&mut self, b: u8) {
        self.pos += 1;
        match b {
            b'\n' if self.prev_cr => self.prev_cr = false,
            b'\n' => self.line += 1,
            b'\r' => {
                self.line += 1;
                self.prev_cr = true;
            }
            _ => self.prev_cr = false,
        }
    }

    fn skip_bom(&mut self) -> io::Result<()> {
        for &expected in BOM {
            match self.peek()? {
                Some(b) if b == expected => self.pos += 1,
                _ if self.pos == 0 => return Ok(()),
                _ => return Ok(()), // a partial BOM is left to fail as an unexpected token
            }
        }
        Ok(())
    }

    /// The next token, or `None` at end of input.
    fn next(&mut self) -> Result<Option<&[u8]>, StlError> {
        while let Some(b) = self.peek()? {
            if !is_space(b) {
                break;
            }
            self.bump(b);
        }
        self.tok.clear();
        self.tok_line = self.line;
        while let Some(b) = self.peek()? {
            if is_space(b) {
                break;
            }
            if self.tok.len() == MAX_TOKEN {
                return Err(StlError::Syntax {
                    line: self.tok_line,
                    msg: format!("a word longer than {MAX_TOKEN} bytes; this is not ASCII STL"),
                });
            }
            self.tok.push(b);
            self.bump(b);
        }
        Ok(if self.tok.is_empty() { None } else { Some(&self.tok) })
    }

    /// Skips the rest of the current line (a solid's name).
    fn skip_line(&mut self) -> io::Result<()> {
        while let Some(b) = self.peek()? {
            if b == b'\n' || b == b'\r' {
                return Ok(());
            }
            self.bump(b);
        }
        Ok(())
    }

    fn err(&self, msg: impl Into<String>) -> StlError {
        StlError::Syntax { line: self.tok_line, msg: msg.into() }
    }
}

/// A token as it should appear in a message: printable and short.
fn show(tok: &[u8]) -> String {
    let s = String::from_utf8_lossy(&tok[..tok.len().min(40)]);
    let s: String = s.chars().flat_map(char::escape_default).collect();
    if tok.len() > 40 { format!("`{s}…`") } else { format!("`{s}`") }
}

struct Parser<R> {
    t: Tokens<R>,
    facets: u64,
}

impl<R: Read> Parser<R> {
    fn keyword(&mut self, want: &str, context: &str) -> Result<(), StlError> {
        let facet = self.facets + 1;
        match self.t.next()? {
            Some(tok) if tok.eq_ignore_ascii_case(want.as_bytes()) => Ok(()),
            Some(tok) => {
                let msg = format!("expected `{want}` {context} of facet {facet}, found {}", show(tok));
                Err(self.t.err(msg))
            }
            None => Err(self.t.err(format!("file ends inside facet {facet} (expected `{want}` {context})"))),
        }
    }

    fn number(&mut self, what: &str) -> Result<f32, StlError> {
        let facet = self.facets + 1;
        let Some(tok) = self.t.next()? else {
            return Err(self.t.err(format!("file ends inside facet {facet} (expected the {what})")));
        };
        // Straight to f32: std's parser rounds correctly from the decimal text.
        match std::str::from_utf8(tok).ok().and_then(|s| s.parse::<f32>().ok()) {
            Some(v) => Ok(v),
            None => {
                let msg = format!("{} is not a number (the {what} of facet {facet})", show(tok));
                Err(self.t.err(msg))
            }
        }
    }

    fn facet(&mut self) -> Result<(Vertex, Facet), StlError> {
        self.keyword("normal", "after `facet`")?;
        let mut normal: Vertex = [0.0; 3];
        for (n, axis) in normal.iter_mut().zip(["x", "y", "z"]) {
            *n = self.number(&format!("normal's {axis}"))?;
        }
        self.keyword("outer", "after the normal")?;
        self.keyword("loop", "after `outer`")?;
        let mut f: Facet = [[0.0; 3]; 3];
        for (k, corner) in f.iter_mut().enumerate() {
            let facet = self.facets + 1;
            match self.t.next()? {
                Some(tok) if tok.eq_ignore_ascii_case(b"vertex") => {}
                Some(tok) if tok.eq_ignore_ascii_case(b"endloop") => {
                    return Err(self
                        .t
                        .err(format!("the loop of facet {facet} has {k} vertices; a facet needs exactly 3")));
                }
                Some(tok) => {
                    let msg = format!("expected `vertex` in facet {facet}, found {}", show(tok));
                    return Err(self.t.err(msg));
                }
                None => return Err(self.t.err(format!("file ends inside facet {facet}"))),
            }
            let line = self.t.tok_line;
            for (c, axis) in ["x", "y", "z"].iter().enumerate() {
                let v = self.number(&format!("{axis} of vertex {}", k + 1))?;
                if !v.is_finite() {
                    return Err(StlError::NonFinite { facet, vertex: k as u8 + 1, value: v, line: Some(line) });
                }
                corner[c] = v;
            }
        }
        let facet = self.facets + 1;
        match self.t.next()? {
            Some(tok) if tok.eq_ignore_ascii_case(b"endloop") => {}
            Some(tok) if tok.eq_ignore_ascii_case(b"vertex") => {
                return Err(self
                    .t
                    .err(format!("the loop of facet {facet} has more than 3 vertices; a facet needs exactly 3")));
            }
            Some(tok) => {
                let msg = format!("expected `endloop` in facet {facet}, found {}", show(tok));
                return Err(self.t.err(msg));
            }
            None => return Err(self.t.err(format!("file ends inside facet {facet}"))),
        }
        self.keyword("endfacet", "at the end")?;
        Ok((normal, f))
    }
}

/// Reads every solid of an ASCII STL stream positioned at its start.
pub fn read<R: Read>(r: R, each: &mut impl FnMut(&Vertex, &Facet) -> io::Result<()>) -> Result<ReadSummary, StlError> {
    let mut p = Parser { t: Tokens::new(r), facets: 0 };
    p.t.skip_bom()?;
    let mut summary = ReadSummary::default();
    loop {
        match p.t.next()? {
            None if summary.solids == 0 => return Err(p.t.err("no `solid` in the file")),
            None => break,
            Some(tok) if tok.eq_ignore_ascii_case(b"solid") => {}
            Some(tok) => {
                let msg = format!("expected `solid`, found {}", show(tok));
                return Err(p.t.err(msg));
            }
        }
        summary.solids += 1;
        let solid_line = p.t.tok_line;
        p.t.skip_line()?;
        loop {
            match p.t.next()? {
                None => {
                    summary.warnings.push(format!(
                        "the solid that begins on line {solid_line} has no `endsolid`; the file ends after its last complete facet"
                    ));
                    summary.facets = p.facets;
                    return Ok(summary);
                }
                Some(tok) if tok.eq_ignore_ascii_case(b"endsolid") => {
                    p.t.skip_line()?;
                    break;
                }
                Some(tok) if tok.eq_ignore_ascii_case(b"facet") => {
                    let (normal, f) = p.facet()?;
                    p.facets += 1;
                    each(&normal, &f)?;
                }
                Some(tok) => {
                    let msg = format!("expected `facet` or `endsolid`, found {}", show(tok));
                    return Err(p.t.err(msg));
                }
            }
        }
    }
    summary.facets = p.facets;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parse(text: &str) -> Result<(Vec<Facet>, ReadSummary), StlError> {
        let mut got = Vec::new();
        let s = read(Cursor::new(text.as_bytes().to_vec()), &mut |_, f| {
            got.push(*f);
            Ok(())
        })?;
        Ok((got, s))
    }

    const ONE: &str = "facet normal 0 0 1\nouter loop\nvertex 1 2 3\nvertex 4 5 6\nvertex 7 8 9\nendloop\nendfacet\n";

    #[test]
    fn two_solids_mixed_case_bare_endsolid() {
        let text = format!("solid a\n{ONE}endsolid a\nSOLID\n{}ENDSOLID", ONE.to_uppercase());
        let (f, s) = parse(&text).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!((s.solids, s.facets), (2, 2));
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn cr_only_lines_and_tabs() {
        let text = format!("solid\tname\r{}endsolid\r", ONE.replace('\n', "\r").replace(' ', "\t "));
        let (f, _) = parse(&text).unwrap();
        assert_eq!(f[0][2], [7.0, 8.0, 9.0]);
    }

    #[test]
    fn empty_solids_count() {
        let (f, s) = parse("solid a\nendsolid a\nsolid b\nendsolid b\n").unwrap();
        assert!(f.is_empty());
        assert_eq!(s.solids, 2);
    }

    #[test]
    fn missing_endsolid_after_complete_facet_warns() {
        let (f, s) = parse(&format!("solid a\n{ONE}")).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(s.warnings.len(), 1);
    }

    #[test]
    fn number_forms_parse_straight_to_f32() {
        let text = "solid\nfacet normal 0 0 0 outer loop\nvertex 1.5E+02 .5 +3\nvertex 1e-40 -0 7\nvertex 0.1 1e-45 3.4028235e38\nendloop endfacet endsolid";
        let (f, _) = parse(text).unwrap();
        assert_eq!(f[0][0], [150.0, 0.5, 3.0]);
        assert_eq!(f[0][1][0], 1e-40_f32);
        assert!(f[0][1][1].is_sign_negative());
        assert_eq!(f[0][2], [0.1_f32, 1e-45_f32, f32::MAX]);
    }

    #[test]
    fn errors_name_the_line() {
        let bad = "solid\nfacet normal 0 0 1\nouter loop\nvertex 0 0 blah\n";
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.starts_with("line 4: `blah` is not a number"), "{e}");
        let four = ONE.replace("endloop", "vertex 1 1 1\nendloop");
        let e = parse(&format!("solid\n{four}endsolid")).unwrap_err().to_string();
        assert!(e.starts_with("line 7: the loop of facet 1 has more than 3 vertices"), "{e}");
        let two = ONE.replace("vertex 7 8 9\n", "");
        let e = parse(&format!("solid\n{two}endsolid")).unwrap_err().to_string();
        assert!(e.contains("has 2 vertices"), "{e}");
        let e = parse("solid\nfacet normal 0 0 1\nouter loop\nvertex 1 2").unwrap_err().to_string();
        assert!(e.starts_with("line 4: file ends inside facet 1"), "{e}");
        let e = parse("solid\nfacet normal 0 0 1\nouter loop\nvertex 1 2 nan").unwrap_err().to_string();
        assert!(e.starts_with("facet 1 (line 4): vertex 1 has a non-finite coordinate (NaN)"), "{e}");
        let e = parse("solid x\nendsolid\ngarbage").unwrap_err().to_string();
        assert!(e.starts_with("line 3: expected `solid`, found `garbage`"), "{e}");
    }

    #[test]
    fn long_tokens_are_refused() {
        let e = parse(&format!("solid\n{}", "x".repeat(10_000))).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
    }

    #[test]
    fn crlf_counts_one_line() {
        let e = parse("solid\r\n\r\nfacet normal 0 0 1\r\nbogus").unwrap_err().to_string();
        assert!(e.starts_with("line 4:"), "{e}");
    }
}
