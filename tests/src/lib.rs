//! End-to-end tests of the image-url workspace live in `tests/tests/`; this library holds
//! helpers they share.
