//! gikev2-policy: the SQL policy store (see README.md).
