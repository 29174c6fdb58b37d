-- The group's policy as the rekey sender last announced it to the members.
--
-- RFC 9838 3.2.1 (R055): "A G-IKEv2 rekey message MUST NOT change the policy without
-- creating a new KEK." The rekey sender compares the policy a GSA_REKEY carries with the
-- one the members hold (docs/interop.md #53, #58). It kept that in memory only, so a
-- policy edited while no GCKS process ran (or before a process took the group's lease
-- over) was taken as already given, and the next GSA_REKEY could carry it under the old
-- KEK. The text is the rekey sender's own (one line per TEK policy and one for the
-- group-wide policy); NULL until its first look at the group.
ALTER TABLE group_state ADD COLUMN announced_policy TEXT;
