-- G-IKEv2 GCKS policy store, SQLite schema (docs/sql-admin.md explains each table).
-- Kept in step with migrations/postgres/0001_initial.sql: same tables, columns, constraints.
-- STRICT tables enforce column types; foreign keys are enforced because the store opens
-- every connection with PRAGMA foreign_keys = ON.
-- Columns named *_enc hold secrets sealed with the master key (nonce | ciphertext | tag):
-- write them only through the gcks CLI.

CREATE TABLE store_meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
) STRICT;

CREATE TABLE signing_keys (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 255),
    scheme      TEXT NOT NULL CHECK (scheme IN ('ed25519', 'ecdsa-p256-sha256', 'rsa-pss-sha256',
                                                'ml-dsa-44', 'ml-dsa-65', 'ml-dsa-87')),
    pkcs8_enc   BLOB NOT NULL CHECK (length(pkcs8_enc) > 28),
    public_spki BLOB NOT NULL UNIQUE CHECK (length(public_spki) BETWEEN 1 AND 8192),
    created_at  INTEGER NOT NULL CHECK (created_at >= 0)
) STRICT;

CREATE TABLE trust_anchors (
    id       INTEGER PRIMARY KEY,
    name     TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 255),
    cert_der BLOB NOT NULL CHECK (length(cert_der) BETWEEN 1 AND 65535)
) STRICT;

CREATE TABLE groups (
    id                        INTEGER PRIMARY KEY,
    name                      TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 255),
    idg_type                  INTEGER NOT NULL CHECK (idg_type BETWEEN 1 AND 255),
    idg_value                 BLOB NOT NULL CHECK (length(idg_value) BETWEEN 1 AND 1024),
    capacity                  INTEGER NOT NULL CHECK (capacity BETWEEN 1 AND 4294967295),
    rekey_mode                TEXT NOT NULL CHECK (rekey_mode IN ('multicast', 'inband', 'none')),
    rekey_dst_addr            TEXT CHECK (rekey_dst_addr NOT GLOB '*[^0-9A-Fa-f:.]*'
                                          AND (rekey_dst_addr GLOB '22[4-9].*'
                                               OR rekey_dst_addr GLOB '23[0-9].*'
                                               OR rekey_dst_addr GLOB '[Ff][Ff][0-9A-Fa-f][0-9A-Fa-f]:*')),
    rekey_dst_port            INTEGER CHECK (rekey_dst_port BETWEEN 1 AND 65535),
    rekey_src_addr            TEXT CHECK (rekey_src_addr NOT GLOB '*[^0-9A-Fa-f:.]*'),
    rekey_src_port            INTEGER CHECK (rekey_src_port BETWEEN 1 AND 65535),
    rekey_lifetime_secs       INTEGER NOT NULL CHECK (rekey_lifetime_secs BETWEEN 1 AND 4294967295),
    rekey_encr_id             INTEGER NOT NULL CHECK (rekey_encr_id BETWEEN 1 AND 65535),
    rekey_encr_key_bits       INTEGER CHECK (rekey_encr_key_bits IN (128, 192, 256)),
    rekey_integ_id            INTEGER CHECK (rekey_integ_id BETWEEN 1 AND 65535),
    rekey_kwa_id              INTEGER NOT NULL CHECK (rekey_kwa_id BETWEEN 1 AND 65535),
    gcauth_id                 INTEGER NOT NULL CHECK (gcauth_id IN (1, 2)),
    signing_key_id            INTEGER REFERENCES signing_keys (id) ON DELETE RESTRICT,
    tek_lifetime_secs         INTEGER NOT NULL CHECK (tek_lifetime_secs BETWEEN 1 AND 4294967295),
    atd_secs                  INTEGER CHECK (atd_secs BETWEEN 0 AND 65535),
    dtd_secs                  INTEGER CHECK (dtd_secs BETWEEN 0 AND 65535),
    sender_id_bits            INTEGER CHECK (sender_id_bits BETWEEN 1 AND 32),
    max_sender_ids_per_member INTEGER NOT NULL DEFAULT 16
                              CHECK (max_sender_ids_per_member BETWEEN 1 AND 1024),
    created_at                INTEGER NOT NULL CHECK (created_at >= 0),
    UNIQUE (idg_type, idg_value),
    CONSTRAINT multicast_rekey_needs_destination
        CHECK (rekey_mode <> 'multicast' OR (rekey_dst_addr IS NOT NULL AND rekey_dst_port IS NOT NULL)),
    CONSTRAINT signature_gcauth_needs_signing_key
        CHECK (gcauth_id <> 2 OR signing_key_id IS NOT NULL)
) STRICT;

CREATE TABLE tek_policies (
    id             INTEGER PRIMARY KEY,
    group_id       INTEGER NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    protocol       TEXT NOT NULL DEFAULT 'esp' CHECK (protocol IN ('esp')),
    ip_protocol    INTEGER NOT NULL DEFAULT 0 CHECK (ip_protocol BETWEEN 0 AND 255),
    src_addr_start TEXT NOT NULL CHECK (src_addr_start NOT GLOB '*[^0-9A-Fa-f:.]*'),
    src_addr_end   TEXT NOT NULL CHECK (src_addr_end NOT GLOB '*[^0-9A-Fa-f:.]*'),
    src_port_start INTEGER NOT NULL DEFAULT 0 CHECK (src_port_start BETWEEN 0 AND 65535),
    src_port_end   INTEGER NOT NULL DEFAULT 65535 CHECK (src_port_end BETWEEN 0 AND 65535),
    dst_addr_start TEXT NOT NULL CHECK (dst_addr_start NOT GLOB '*[^0-9A-Fa-f:.]*'),
    dst_addr_end   TEXT NOT NULL CHECK (dst_addr_end NOT GLOB '*[^0-9A-Fa-f:.]*'),
    dst_port_start INTEGER NOT NULL DEFAULT 0 CHECK (dst_port_start BETWEEN 0 AND 65535),
    dst_port_end   INTEGER NOT NULL DEFAULT 65535 CHECK (dst_port_end BETWEEN 0 AND 65535),
    encr_id        INTEGER NOT NULL CHECK (encr_id BETWEEN 1 AND 65535),
    encr_key_bits  INTEGER CHECK (encr_key_bits IN (128, 192, 256)),
    integ_id       INTEGER CHECK (integ_id BETWEEN 1 AND 65535),
    sn_id          INTEGER NOT NULL CHECK (sn_id IN (0, 1, 2)),
    mode           TEXT NOT NULL CHECK (mode IN ('transport', 'tunnel')),
    CONSTRAINT src_ports_ordered CHECK (src_port_start <= src_port_end),
    CONSTRAINT dst_ports_ordered CHECK (dst_port_start <= dst_port_end),
    UNIQUE (id, group_id)
) STRICT;

CREATE INDEX tek_policies_group ON tek_policies (group_id);

CREATE TABLE members (
    id              INTEGER PRIMARY KEY,
    id_type         INTEGER NOT NULL CHECK (id_type BETWEEN 1 AND 255),
    id_value        BLOB NOT NULL CHECK (length(id_value) BETWEEN 1 AND 1024),
    name            TEXT CHECK (length(name) BETWEEN 1 AND 255),
    credential_kind TEXT NOT NULL CHECK (credential_kind IN ('psk', 'raw_public_key', 'x509')),
    psk_enc         BLOB CHECK (length(psk_enc) > 28),
    public_spki     BLOB CHECK (length(public_spki) BETWEEN 1 AND 8192),
    created_at      INTEGER NOT NULL CHECK (created_at >= 0),
    UNIQUE (id_type, id_value),
    CONSTRAINT psk_iff_psk_member CHECK ((credential_kind = 'psk') = (psk_enc IS NOT NULL)),
    CONSTRAINT spki_iff_raw_key_member
        CHECK ((credential_kind = 'raw_public_key') = (public_spki IS NOT NULL))
) STRICT;

CREATE TABLE member_trust_anchors (
    member_id       INTEGER NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    trust_anchor_id INTEGER NOT NULL REFERENCES trust_anchors (id) ON DELETE RESTRICT,
    PRIMARY KEY (member_id, trust_anchor_id)
) STRICT;

CREATE TABLE authorizations (
    member_id  INTEGER NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    group_id   INTEGER NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('receiver', 'sender')),
    created_at INTEGER NOT NULL CHECK (created_at >= 0),
    PRIMARY KEY (member_id, group_id)
) STRICT;

CREATE INDEX authorizations_group ON authorizations (group_id);

-- One row per group, created with the group: the per-group lock of every state operation.
CREATE TABLE group_state (
    group_id              INTEGER PRIMARY KEY REFERENCES groups (id) ON DELETE CASCADE,
    generation            INTEGER NOT NULL DEFAULT 0 CHECK (generation >= 0),
    rekey_spi             BLOB UNIQUE CHECK (length(rekey_spi) = 16),
    rekey_keymat_enc      BLOB CHECK (length(rekey_keymat_enc) > 28),
    rekey_expires_at      INTEGER CHECK (rekey_expires_at >= 0),
    next_rekey_message_id INTEGER NOT NULL DEFAULT 0
                          CHECK (next_rekey_message_id BETWEEN 0 AND 4294967296),
    next_sender_id        INTEGER NOT NULL DEFAULT 0 CHECK (next_sender_id BETWEEN 0 AND 4294967296),
    sender_id_epoch       INTEGER NOT NULL DEFAULT 0 CHECK (sender_id_epoch >= 0),
    updated_at            INTEGER NOT NULL CHECK (updated_at >= 0),
    CONSTRAINT rekey_sa_complete
        CHECK ((rekey_spi IS NULL) = (rekey_keymat_enc IS NULL)
               AND (rekey_spi IS NULL) = (rekey_expires_at IS NULL))
) STRICT;

CREATE TABLE tek_sas (
    spi         INTEGER PRIMARY KEY CHECK (spi BETWEEN 256 AND 4294967295),
    group_id    INTEGER NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    policy_id   INTEGER NOT NULL,
    keymat_enc  BLOB NOT NULL CHECK (length(keymat_enc) > 28),
    created_at  INTEGER NOT NULL CHECK (created_at >= 0),
    expires_at  INTEGER NOT NULL CHECK (expires_at >= 0),
    -- A TEK implements a policy of its own group.
    FOREIGN KEY (policy_id, group_id) REFERENCES tek_policies (id, group_id) ON DELETE CASCADE
) STRICT;

CREATE INDEX tek_sas_group ON tek_sas (group_id);

CREATE TABLE sender_ids (
    group_id     INTEGER NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    sender_id    INTEGER NOT NULL CHECK (sender_id BETWEEN 0 AND 4294967295),
    member_id    INTEGER REFERENCES members (id) ON DELETE SET NULL,
    epoch        INTEGER NOT NULL CHECK (epoch >= 0),
    allocated_at INTEGER NOT NULL CHECK (allocated_at >= 0),
    PRIMARY KEY (group_id, sender_id)
) STRICT;

CREATE INDEX sender_ids_member ON sender_ids (member_id);

CREATE TABLE memberships (
    group_id  INTEGER NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    member_id INTEGER NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    joined_at INTEGER NOT NULL CHECK (joined_at >= 0),
    PRIMARY KEY (group_id, member_id)
) STRICT;

CREATE INDEX memberships_member ON memberships (member_id);

CREATE TABLE rekey_leases (
    group_id   INTEGER PRIMARY KEY REFERENCES groups (id) ON DELETE CASCADE,
    holder     TEXT NOT NULL CHECK (length(holder) BETWEEN 1 AND 255),
    expires_at INTEGER NOT NULL CHECK (expires_at >= 0)
) STRICT;

CREATE TABLE audit_log (
    id              INTEGER PRIMARY KEY,
    at              INTEGER NOT NULL CHECK (at >= 0),
    peer_id_type    INTEGER CHECK (peer_id_type BETWEEN 1 AND 255),
    peer_id_value   BLOB CHECK (length(peer_id_value) <= 1024),
    group_idg_type  INTEGER CHECK (group_idg_type BETWEEN 1 AND 255),
    group_idg_value BLOB CHECK (length(group_idg_value) <= 1024),
    outcome         TEXT NOT NULL CHECK (outcome IN ('registered', 'refused', 'left', 'excluded')),
    reason          TEXT NOT NULL DEFAULT '' CHECK (length(reason) <= 1024),
    CONSTRAINT peer_complete CHECK ((peer_id_type IS NULL) = (peer_id_value IS NULL)),
    CONSTRAINT group_complete CHECK ((group_idg_type IS NULL) = (group_idg_value IS NULL))
) STRICT;

CREATE INDEX audit_log_at ON audit_log (at);
