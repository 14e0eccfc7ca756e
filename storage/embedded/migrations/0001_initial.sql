-- Schema version 1 of the embedded store (one SQLite file, one writer thread).
--
-- Concurrency: every statement runs on the single connection owned by the worker thread of
-- storage/embedded/database.py, one job after the other. A job is therefore a critical
-- section: a SELECT followed by a DELETE or INSERT in the same job cannot be interleaved
-- with another job, which is what makes the check-then-act steps below safe without
-- row locks. The constraints are the second line of defence, not the first.

CREATE TABLE users (
    user       TEXT PRIMARY KEY,  -- canonical lower-case UUID
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- Devices are never deleted, only marked removed: the highest number ever assigned is
-- MAX(device), so numbers are never reused, and a removed device's identity key stays
-- on record as retired.
CREATE TABLE devices (
    user            TEXT NOT NULL REFERENCES users (user),
    device          INTEGER NOT NULL CHECK (device BETWEEN 1 AND 127),
    identity_key    BLOB NOT NULL,
    key_scheme      TEXT NOT NULL,
    identity_x25519 BLOB NOT NULL,
    registration_id INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL,
    removed_ms      INTEGER,  -- NULL while the device is active
    PRIMARY KEY (user, device)
) WITHOUT ROWID;

-- One identity key belongs to at most one active device.
CREATE UNIQUE INDEX devices_active_identity
    ON devices (identity_x25519) WHERE removed_ms IS NULL;
-- Finds retired keys (removed devices) as well as active ones.
CREATE INDEX devices_identity ON devices (identity_x25519);

CREATE TABLE signed_prekeys (
    user        TEXT NOT NULL,
    device      INTEGER NOT NULL,
    key_id      INTEGER NOT NULL,
    key         BLOB NOT NULL,
    signature   BLOB NOT NULL,
    uploaded_ms INTEGER NOT NULL,
    PRIMARY KEY (user, device),
    FOREIGN KEY (user, device) REFERENCES devices (user, device)
) WITHOUT ROWID;

CREATE TABLE pq_last_resort_keys (
    user        TEXT NOT NULL,
    device      INTEGER NOT NULL,
    key_id      INTEGER NOT NULL,
    key         BLOB NOT NULL,
    signature   BLOB NOT NULL,
    uploaded_ms INTEGER NOT NULL,
    PRIMARY KEY (user, device),
    FOREIGN KEY (user, device) REFERENCES devices (user, device)
) WITHOUT ROWID;

-- One-time keys are handed out oldest first: `seq` is the rowid, which grows with every
-- insert (a new row gets a rowid above every row present), so it orders the keys present
-- by upload. The (user, device) index lists a device's keys in rowid order.
CREATE TABLE one_time_prekeys (
    seq    INTEGER PRIMARY KEY,
    user   TEXT NOT NULL,
    device INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    key    BLOB NOT NULL,
    UNIQUE (user, device, key_id),
    FOREIGN KEY (user, device) REFERENCES devices (user, device)
);
CREATE INDEX one_time_prekeys_by_device ON one_time_prekeys (user, device);

CREATE TABLE one_time_pq_prekeys (
    seq       INTEGER PRIMARY KEY,
    user      TEXT NOT NULL,
    device    INTEGER NOT NULL,
    key_id    INTEGER NOT NULL,
    key       BLOB NOT NULL,
    signature BLOB NOT NULL,
    UNIQUE (user, device, key_id),
    FOREIGN KEY (user, device) REFERENCES devices (user, device)
);
CREATE INDEX one_time_pq_prekeys_by_device ON one_time_pq_prekeys (user, device);

-- AUTOINCREMENT: a seq is never handed out twice, even after the newest row was acked and
-- deleted, so a drain cursor (seq > after_seq) can never skip a message stored later.
CREATE TABLE messages (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_user   TEXT NOT NULL,
    recipient_device INTEGER NOT NULL,
    id               BLOB NOT NULL,
    sender_user      TEXT NOT NULL,
    sender_device    INTEGER NOT NULL,
    ts               INTEGER NOT NULL,
    server_ts        INTEGER NOT NULL,
    type             INTEGER NOT NULL,
    body             BLOB NOT NULL,
    nonce            BLOB NOT NULL,
    expires_ms       INTEGER NOT NULL,
    -- A retried store of the same (device, id) is ignored against this constraint.
    UNIQUE (recipient_user, recipient_device, id),
    FOREIGN KEY (recipient_user, recipient_device) REFERENCES devices (user, device)
);
-- A device's messages in seq (rowid) order: drains and queue_state.
CREATE INDEX messages_by_device ON messages (recipient_user, recipient_device);
CREATE INDEX messages_expiry ON messages (expires_ms);

-- Completed sends only; pending claims live in memory (they die with the process, as the
-- sends they guard do). Device lists are JSON arrays of integers.
CREATE TABLE replay (
    sender_user    TEXT NOT NULL,
    sender_device  INTEGER NOT NULL,
    recipient_user TEXT NOT NULL,
    nonce          BLOB NOT NULL,
    message_id     BLOB NOT NULL,
    delivered      TEXT NOT NULL,
    stored         TEXT NOT NULL,
    expires_ms     INTEGER NOT NULL,
    PRIMARY KEY (sender_user, sender_device, recipient_user, nonce)
) WITHOUT ROWID;
CREATE INDEX replay_expiry ON replay (expires_ms);
