-- Schema version 7 of the embedded store: encrypted key backups (docs/protocol.md, key
-- backup; storage/embedded/backups.py), as the PostgreSQL store's migration 0008.
--
-- * backups: one row per user that ever saved a backup. `version` is the last version given;
--   a deleted backup keeps its row with blob and access_key NULL, so versions never repeat.
--   With encryption at rest, `user` is a keyed hash, `owner` the user id sealed under the
--   index key, `access_key` a keyed hash and `blob` sealed with data key `key_id`; without
--   it, `owner` = `user` and key_id 0 (the blob as the client sealed it).
-- * key_events: the kinds backup_put, backup_get and backup_delete. SQLite cannot change a
--   CHECK constraint, so the table is rebuilt as in 0004 with the longer list, its rows
--   copied with their ids (and the AUTOINCREMENT counter carried over, as 0005 does for
--   messages), and its indexes made again.

CREATE TABLE backups (
    user       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    version    INTEGER NOT NULL CHECK (version > 0),
    access_key BLOB UNIQUE,
    key_id     INTEGER NOT NULL DEFAULT 0,
    blob       BLOB,
    updated_ms INTEGER NOT NULL,
    CHECK ((blob IS NULL) = (access_key IS NULL))
) WITHOUT ROWID;

CREATE TABLE key_events_v6 (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms  INTEGER NOT NULL,
    user   TEXT NOT NULL,
    device INTEGER NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN (
        'register', 'add_device', 'remove_device', 'identity_key_retired',
        'signed_prekey_rotated', 'prekeys_uploaded', 'prekey_claimed', 'claim_without_prekey',
        'backup_put', 'backup_get', 'backup_delete'
    )),
    detail TEXT NOT NULL DEFAULT '{}'  -- a JSON object
);

INSERT INTO key_events_v6 (id, at_ms, user, device, kind, detail)
SELECT id, at_ms, user, device, kind, detail FROM key_events;

DELETE FROM sqlite_sequence WHERE name = 'key_events_v6';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'key_events_v6', seq FROM sqlite_sequence WHERE name = 'key_events';

DROP TABLE key_events;
ALTER TABLE key_events_v6 RENAME TO key_events;

CREATE INDEX key_events_by_user ON key_events (user, id);
CREATE INDEX key_events_by_time ON key_events (at_ms);
