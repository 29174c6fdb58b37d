-- Forward access control (RFC 9838 3.2.1): when a group asks for it, a member that leaves
-- the group or loses its authorization must not read what the group sends next. Without a
-- key hierarchy (LKH) the GCKS cannot reach the others without reaching that member too,
-- so its rekey sender excludes every member (2.4.3) over the old Rekey SA, with new SAs in
-- the store; the members still authorized re-register and get them over their own
-- authenticated IKE SA. `members_removed` counts the departures it has not acted on yet.
ALTER TABLE groups ADD COLUMN forward_access_control BOOLEAN NOT NULL DEFAULT FALSE;

ALTER TABLE group_state ADD COLUMN members_removed BIGINT NOT NULL DEFAULT 0
    CHECK (members_removed >= 0);

CREATE FUNCTION gikev2_memberships_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE group_state SET members_removed = members_removed + 1
    WHERE group_id = OLD.group_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER memberships_removed AFTER DELETE ON memberships
    FOR EACH ROW EXECUTE FUNCTION gikev2_memberships_removed();

CREATE TRIGGER memberships_moved AFTER UPDATE OF group_id ON memberships
    FOR EACH ROW WHEN (NEW.group_id <> OLD.group_id)
    EXECUTE FUNCTION gikev2_memberships_removed();

-- A withdrawn authorization ends the membership it allowed (and so counts as above; the
-- member's place is freed for the group's capacity).
CREATE FUNCTION gikev2_authorizations_withdrawn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM memberships WHERE group_id = OLD.group_id AND member_id = OLD.member_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER authorizations_withdrawn AFTER DELETE ON authorizations
    FOR EACH ROW EXECUTE FUNCTION gikev2_authorizations_withdrawn();
