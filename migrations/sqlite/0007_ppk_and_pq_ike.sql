-- Post-quantum protection of the registration IKE SA (RFC 9838 6.2).
--
-- A member may have a post-quantum preshared key (RFC 8784): its PPK_ID (without the
-- PPK_ID_FIXED type octet, RFC 8784 5.1) and the PPK sealed with the master key like
-- psk_enc (bound to the member's identity and the PPK_ID). Both or neither. `ppk_required`
-- is RFC 8784's mandatory_or_not on the GCKS's side: the member must use that PPK (no
-- NO_PPK_AUTH fallback, no IKE SA without it); it needs a PPK to be required.
ALTER TABLE members ADD COLUMN ppk_id BLOB CHECK (length(ppk_id) BETWEEN 1 AND 255);
ALTER TABLE members ADD COLUMN ppk_enc BLOB
    CHECK ((ppk_enc IS NULL) = (ppk_id IS NULL) AND length(ppk_enc) > 28);
ALTER TABLE members ADD COLUMN ppk_required INTEGER NOT NULL DEFAULT 0
    CHECK (ppk_required IN (0, 1) AND (ppk_required = 0 OR ppk_enc IS NOT NULL));

-- R129 (RFC 9838 6.2): a group whose GCKS "cares about other data sent over the initial
-- IKE SA" admits a member only over an IKE SA that included a post-quantum key exchange
-- (ML-KEM, RFC 9370); a PPK alone protects the group keys, not the rest of that SA.
ALTER TABLE groups ADD COLUMN require_pq_ike INTEGER NOT NULL DEFAULT 0
    CHECK (require_pq_ike IN (0, 1));
