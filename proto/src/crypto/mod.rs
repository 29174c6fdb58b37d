//! Crypto suites behind one provider seam (STYLE R4). Being built: see the crypto work item.
