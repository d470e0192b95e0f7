//! STL meshes. For now: the built-in sample mesh the demo serves (a torus, written as binary STL).

pub mod sample;
