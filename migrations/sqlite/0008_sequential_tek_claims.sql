-- A TEK with "32-bit Sequential Numbers" is handed to at most one sender registration.
--
-- RFC 9838 4.4.2.1.3: those numbers are for "single-sender multicast Data-Security SAs"
-- (R077), and receivers check them with an anti-replay window (RFC 4303 3.4.3). A sender
-- that registers again (a restarted `gm`, say) starts its counter at 1 again, and its
-- packets on a TEK it already sent on would be dropped as replays. The GCKS cannot tell a
-- restart from any other re-registration, so it gives each sender registration a TEK no
-- earlier sender registration got: `sender_claimed` is set when one is given the TEK (or
-- when a GSA_REKEY pushes it while a sender is authorized), and a sender registration
-- that finds it set has the TEK replaced first (docs/interop.md #65).
--
-- TEKs from before this migration may already be in a sender's hands: those with
-- sequential numbers (sn_id 0) count as claimed, so the next sender registration gets a
-- new one.
ALTER TABLE tek_sas ADD COLUMN sender_claimed INTEGER NOT NULL DEFAULT 0
    CHECK (sender_claimed IN (0, 1));
UPDATE tek_sas SET sender_claimed = 1 WHERE sn_id = 0;
