//! gikev2-esp: the shared ESP engine (see README.md).
