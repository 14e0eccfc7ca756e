-- Schema version 8: encrypted key backups (docs/protocol.md, key backup;
-- storage/postgres/backups.py), as the embedded store's migration 0007.
--
-- One row per user that ever saved a backup. `version` is the last version given; a deleted
-- backup keeps its row with blob and access_key NULL, so versions never repeat for a user.
-- With encryption at rest, user_id is a keyed hash, `owner` the user id sealed under the
-- index key, access_key a keyed hash and `blob` sealed with data key key_id; without it,
-- owner = user_id and key_id NULL (the blob as the client sealed it). key_id references
-- data_keys as messages do, so delete_retired cannot drop a key a backup still needs.
-- Puts of one user are serialised by the row lock of their UPDATE (or the primary key of
-- the first INSERT); the access key is unique across users.
CREATE TABLE backups (
    user_id    text PRIMARY KEY,
    owner      text NOT NULL,
    version    bigint NOT NULL CHECK (version > 0),
    access_key bytea UNIQUE,
    key_id     integer REFERENCES data_keys (id),
    blob       bytea,
    updated_ms bigint NOT NULL,
    CHECK ((blob IS NULL) = (access_key IS NULL))
);

ALTER TABLE key_events DROP CONSTRAINT key_events_kind_check;
ALTER TABLE key_events ADD CONSTRAINT key_events_kind_check CHECK (kind IN (
    'register',                -- create_user: device 1 and its identity key
    'add_device',              -- a device linked to an existing user
    'remove_device',           -- the device removed, its keys and stored messages deleted
    'identity_key_retired',    -- the removed device's identity key, never usable again
    'signed_prekey_rotated',   -- a new signed pre-key (detail: key_id)
    'prekeys_uploaded',        -- one-time / last-resort keys stored (detail: counts, key ids)
    'prekey_claimed',          -- a bundle with a one-time EC key (detail: key ids, requester)
    'claim_without_prekey',    -- a bundle without one (detail: key ids, requester, reason)
    'backup_put',              -- the key backup replaced (detail: version)
    'backup_get',              -- the key backup read (detail: version, via)
    'backup_delete'            -- the key backup deleted (detail: version)
));
