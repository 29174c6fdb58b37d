-- Registrations refused a Sender-ID because the group's Sender-ID space ran out, in the
-- current epoch. The rekey sender starts a new epoch (RFC 9838 2.5.1 step 5: every member
-- excluded first, 2.4.3) only when this is above zero, so a group whose senders exactly
-- fill the space is not excluded again and again. Reset to 0 with the epoch.
ALTER TABLE group_state ADD COLUMN sender_id_refusals INTEGER NOT NULL DEFAULT 0
    CHECK (sender_id_refusals >= 0);
