//! End-to-end tests for plughost live in `tests/e2e/`; this library is empty.
