-- The members counted against each group's capacity, kept in the group's state row by
-- triggers. A registration reads it with the row it locks anyway, instead of counting
-- the group's memberships (an index scan as long as the group, once per batch), and an
-- administrator's plain SQL insert, delete or move of memberships keeps it right.
ALTER TABLE group_state ADD COLUMN member_count INTEGER NOT NULL DEFAULT 0
    CHECK (member_count >= 0);

UPDATE group_state SET member_count =
    (SELECT COUNT(*) FROM memberships m WHERE m.group_id = group_state.group_id);

-- A state row created (or re-created) after its group already has members.
CREATE TRIGGER group_state_count_init AFTER INSERT ON group_state
BEGIN
    UPDATE group_state SET member_count =
        (SELECT COUNT(*) FROM memberships m WHERE m.group_id = NEW.group_id)
    WHERE group_id = NEW.group_id;
END;

CREATE TRIGGER memberships_count_insert AFTER INSERT ON memberships
BEGIN
    UPDATE group_state SET member_count = member_count + 1 WHERE group_id = NEW.group_id;
END;

CREATE TRIGGER memberships_count_delete AFTER DELETE ON memberships
BEGIN
    UPDATE group_state SET member_count = member_count - 1 WHERE group_id = OLD.group_id;
END;

CREATE TRIGGER memberships_count_move AFTER UPDATE OF group_id ON memberships
WHEN NEW.group_id <> OLD.group_id
BEGIN
    UPDATE group_state SET member_count = member_count - 1 WHERE group_id = OLD.group_id;
    UPDATE group_state SET member_count = member_count + 1 WHERE group_id = NEW.group_id;
END;
