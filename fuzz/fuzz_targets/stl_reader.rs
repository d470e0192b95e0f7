//! The STL reader and CSV writer on arbitrary bytes: never a panic, and (with libFuzzer's
//! `-malloc_limit_mb`) no allocation that grows with what the input claims.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use machinaftp::stl::{self, csv::CsvWriter};

fuzz_target!(|data: &[u8]| {
    let mut w = CsvWriter::new(std::io::sink(), true, false);
    let _ = stl::read(Cursor::new(data), |f| f.iter().try_for_each(|v| w.vertex(v)));
    let _ = w.finish();
});
