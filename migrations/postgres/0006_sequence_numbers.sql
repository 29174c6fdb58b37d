-- Sequence numbers of Data-Security SAs (RFC 9838 2.6, 4.4.2.1.3).
--
-- tek_policies.sn_id NULL: the GCKS chooses the Sequence Numbers transform when it creates
-- each TEK, "32-bit Sequential Numbers" (0) for a multicast destination with at most one
-- sender authorized (4.4.2.1.3, SHOULD), "32-bit Unspecified Numbers" (2) otherwise. The
-- CHECK (sn_id IN (0, 1, 2)) stays.
ALTER TABLE tek_policies ALTER COLUMN sn_id DROP NOT NULL;

-- The most packets per second one sender sends on a TEK of the policy. A TEK with
-- "32-bit Sequential Numbers" lives at most (2^32 - 1) / max_packet_rate seconds, so that
-- its sequence numbers cannot wrap (2.6: "the GCKS MUST be configured to rekey the SA
-- frequently enough so that the 32-bit sequence numbers do not wrap"). The upper bound
-- keeps that lifetime at least 60 s.
ALTER TABLE tek_policies ADD COLUMN max_packet_rate BIGINT NOT NULL DEFAULT 1000000
    CHECK (max_packet_rate BETWEEN 1 AND 71582788);

-- The transform each TEK was created with: its members were told it, so it stays for the
-- TEK's life whatever the policy says later. TEKs from before this migration have their
-- policy's (the GCKS always writes the column; the default only serves this ALTER).
ALTER TABLE tek_sas ADD COLUMN sn_id BIGINT NOT NULL DEFAULT 2 CHECK (sn_id IN (0, 1, 2));
UPDATE tek_sas SET sn_id = p.sn_id FROM tek_policies p WHERE p.id = tek_sas.policy_id;
