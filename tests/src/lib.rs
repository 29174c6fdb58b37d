//! gikev2-tests: harness helpers for end-to-end and interop tests.
