-- Schema version 5 of the embedded store: encryption at rest (storage/at_rest).
--
-- * data_keys: the data keys and the index key, wrapped by the master key (the DataKeyTable
--   interface, storage/embedded/data_keys.py).
-- * store_marks: what the store has been converted to (the ClearData interface,
--   storage/embedded/clear_data.py): the row ('user_ids', 'blinded') once every user id is
--   a keyed hash.
-- * messages: a row is either in the clear columns (key_id 0, sealed NULL: a row from
--   before, or a store run without encryption) or sealed (key_id names the data key,
--   sealed holds sender, timestamp, type, nonce and body, and those clear columns are
--   NULL). SQLite cannot drop NOT NULL from a column, so the table is rebuilt: a new table,
--   the rows copied with their seq, the old one dropped and the new one renamed, then the
--   indexes of 0001 and the queue_counts triggers of 0003 made again as they were.
--
-- The migration runs inside the runner's one transaction (storage/embedded/database.py)
-- with foreign keys on. That is safe here: no table references messages (it only
-- references devices), so dropping it breaks no reference, and the implicit DELETE of a
-- DROP TABLE fires no trigger (they are dropped first anyway). queue_counts is untouched:
-- the rows, hence the counts, stay the same.

CREATE TABLE data_keys (
    id            INTEGER PRIMARY KEY,  -- chosen by the caller: the next free one
    purpose       TEXT NOT NULL CHECK (purpose IN ('data', 'index')),
    state         TEXT NOT NULL CHECK (state IN ('active', 'retired')),
    created_ms    INTEGER NOT NULL,
    retired_ms    INTEGER,
    master_key_id TEXT NOT NULL,
    wrapped       BLOB NOT NULL
);
-- One active data key, one index key (always active): the second line of defence behind
-- the checks of insert_key.
CREATE UNIQUE INDEX data_keys_one_active ON data_keys (purpose) WHERE state = 'active';

CREATE TABLE store_marks (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

DROP TRIGGER messages_counted_in;
DROP TRIGGER messages_counted_out;

-- As in 0001, with the sealed fields nullable and key_id + sealed added.
CREATE TABLE messages_v5 (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_user   TEXT NOT NULL,
    recipient_device INTEGER NOT NULL,
    id               BLOB NOT NULL,
    sender_user      TEXT,
    sender_device    INTEGER,
    ts               INTEGER,
    server_ts        INTEGER NOT NULL,
    type             INTEGER,
    body             BLOB,
    nonce            BLOB,
    expires_ms       INTEGER NOT NULL,
    key_id           INTEGER NOT NULL DEFAULT 0,  -- 0: the fields are in the clear columns
    sealed           BLOB,
    CHECK (
        (key_id = 0 AND sealed IS NULL
            AND sender_user IS NOT NULL AND sender_device IS NOT NULL AND ts IS NOT NULL
            AND type IS NOT NULL AND body IS NOT NULL AND nonce IS NOT NULL)
        OR (key_id <> 0 AND sealed IS NOT NULL
            AND sender_user IS NULL AND sender_device IS NULL AND ts IS NULL
            AND type IS NULL AND body IS NULL AND nonce IS NULL)
    ),
    -- A retried store of the same (device, id) is ignored against this constraint.
    UNIQUE (recipient_user, recipient_device, id),
    FOREIGN KEY (recipient_user, recipient_device) REFERENCES devices (user, device)
);

INSERT INTO messages_v5 (seq, recipient_user, recipient_device, id, sender_user,
                         sender_device, ts, server_ts, type, body, nonce, expires_ms)
SELECT seq, recipient_user, recipient_device, id, sender_user,
       sender_device, ts, server_ts, type, body, nonce, expires_ms
FROM messages;

-- AUTOINCREMENT's promise (a seq is never handed out twice) survives the rebuild: the new
-- table continues from the highest seq the old one ever gave, not from the highest left.
-- (DROP TABLE deletes the old table's row of sqlite_sequence, RENAME renames the new one's.)
DELETE FROM sqlite_sequence WHERE name = 'messages_v5';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'messages_v5', seq FROM sqlite_sequence WHERE name = 'messages';

DROP TABLE messages;
ALTER TABLE messages_v5 RENAME TO messages;

-- The indexes of 0001 and the triggers of 0003, unchanged.
CREATE INDEX messages_by_device ON messages (recipient_user, recipient_device);
CREATE INDEX messages_expiry ON messages (expires_ms);

CREATE TRIGGER messages_counted_in AFTER INSERT ON messages
BEGIN
    INSERT INTO queue_counts (recipient_user, recipient_device, stored)
    VALUES (NEW.recipient_user, NEW.recipient_device, 1)
    ON CONFLICT (recipient_user, recipient_device) DO UPDATE SET stored = stored + 1;
END;

CREATE TRIGGER messages_counted_out AFTER DELETE ON messages
BEGIN
    UPDATE queue_counts SET stored = stored - 1
    WHERE recipient_user = OLD.recipient_user AND recipient_device = OLD.recipient_device;
END;
