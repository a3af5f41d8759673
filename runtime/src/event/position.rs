//! Fixed-width, lexically comparable source positions.
