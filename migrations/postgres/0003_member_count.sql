-- The members counted against each group's capacity, kept in the group's state row by
-- triggers. A registration reads it with the row it locks anyway (FOR UPDATE returns the
-- row's newest version, so the count is current even after waiting for the lock),
-- instead of counting the group's memberships (an index scan as long as the group, once
-- per batch), and an administrator's plain SQL insert, delete or move of memberships
-- keeps it right. Statement-level triggers: one update per group per statement, however
-- many rows a multi-row insert adds.
ALTER TABLE group_state ADD COLUMN member_count BIGINT NOT NULL DEFAULT 0
    CHECK (member_count >= 0);

UPDATE group_state SET member_count =
    (SELECT COUNT(*) FROM memberships m WHERE m.group_id = group_state.group_id);

-- A state row created (or re-created) after its group already has members.
CREATE FUNCTION gikev2_group_state_count_init() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.member_count := (SELECT COUNT(*) FROM memberships m WHERE m.group_id = NEW.group_id);
    RETURN NEW;
END
$$;

CREATE TRIGGER group_state_count_init BEFORE INSERT ON group_state
    FOR EACH ROW EXECUTE FUNCTION gikev2_group_state_count_init();

-- `gone` and `added` are the statement's transition tables; each trigger below names
-- the ones its operation has.
CREATE FUNCTION gikev2_memberships_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE group_state gs SET member_count = gs.member_count - d.n
        FROM (SELECT group_id, COUNT(*) AS n FROM gone GROUP BY group_id) d
        WHERE gs.group_id = d.group_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE group_state gs SET member_count = gs.member_count + a.n
        FROM (SELECT group_id, COUNT(*) AS n FROM added GROUP BY group_id) a
        WHERE gs.group_id = a.group_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER memberships_count_insert AFTER INSERT ON memberships
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION gikev2_memberships_count();

CREATE TRIGGER memberships_count_delete AFTER DELETE ON memberships
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION gikev2_memberships_count();

CREATE TRIGGER memberships_count_update AFTER UPDATE ON memberships
    REFERENCING OLD TABLE AS gone NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION gikev2_memberships_count();
