-- Every group has its group_state row (the per-group lock and counters), also when an
-- administrator creates the group with plain SQL.
CREATE TRIGGER groups_create_state AFTER INSERT ON groups
BEGIN
    INSERT INTO group_state (group_id, updated_at) VALUES (NEW.id, NEW.created_at);
END;

INSERT INTO group_state (group_id, updated_at)
    SELECT id, created_at FROM groups WHERE id NOT IN (SELECT group_id FROM group_state);
