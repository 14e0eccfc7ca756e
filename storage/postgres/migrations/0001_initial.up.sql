-- Schema version 1 of the PostgreSQL store.
--
-- Concurrency in one sentence per table; the statements in storage/postgres/*.py carry the
-- full argument next to the SQL. Every transaction runs at READ COMMITTED.
--
-- users:    add_device locks the user's row (FOR NO KEY UPDATE), so two adds for one user
--           are serialised and the device limit and the next number are computed safely.
-- devices:  never deleted, only marked removed, so MAX(device) is the highest number ever
--           assigned (numbers are never reused) and a removed device's identity key stays
--           on record. identity_x25519 is UNIQUE over all rows, active or removed: a key is
--           either in use or retired for good, so the constraint alone settles every race
--           between two registrations of one key and between a registration and a removal.
-- keys:     one-time keys are claimed with DELETE ... FOR UPDATE SKIP LOCKED; the counts
--           live in prekey_counts, updated in the same transaction as the rows they count.
-- messages: inserted by one writer task per process in batches (group commit); seq is a
--           bigserial, never reused.

CREATE TABLE users (
    user_id    text PRIMARY KEY,  -- canonical lower-case UUID
    created_ms bigint NOT NULL
);

CREATE TABLE devices (
    user_id         text NOT NULL REFERENCES users (user_id),
    device          smallint NOT NULL CHECK (device BETWEEN 1 AND 127),
    identity_key    bytea NOT NULL,
    key_scheme      text NOT NULL,
    identity_x25519 bytea NOT NULL,
    registration_id bigint NOT NULL,
    created_ms      bigint NOT NULL,
    last_seen_ms    bigint NOT NULL,
    removed_ms      bigint,  -- NULL while the device is active
    PRIMARY KEY (user_id, device),
    -- One row per identity key ever registered: active (in use) or removed (retired).
    CONSTRAINT devices_identity_x25519_key UNIQUE (identity_x25519)
);

CREATE TABLE signed_prekeys (
    user_id     text NOT NULL,
    device      smallint NOT NULL,
    key_id      bigint NOT NULL,
    key         bytea NOT NULL,
    signature   bytea NOT NULL,
    uploaded_ms bigint NOT NULL,
    PRIMARY KEY (user_id, device),
    FOREIGN KEY (user_id, device) REFERENCES devices (user_id, device)
);

CREATE TABLE pq_last_resort_keys (
    user_id     text NOT NULL,
    device      smallint NOT NULL,
    key_id      bigint NOT NULL,
    key         bytea NOT NULL,
    signature   bytea NOT NULL,
    uploaded_ms bigint NOT NULL,
    PRIMARY KEY (user_id, device),
    FOREIGN KEY (user_id, device) REFERENCES devices (user_id, device)
);

-- One-time keys are handed out oldest first, by seq (the order of upload).
CREATE TABLE one_time_prekeys (
    seq     bigserial PRIMARY KEY,
    user_id text NOT NULL,
    device  smallint NOT NULL,
    key_id  bigint NOT NULL,
    key     bytea NOT NULL,
    UNIQUE (user_id, device, key_id),
    FOREIGN KEY (user_id, device) REFERENCES devices (user_id, device)
);
CREATE INDEX one_time_prekeys_by_device ON one_time_prekeys (user_id, device, seq);

CREATE TABLE one_time_pq_prekeys (
    seq       bigserial PRIMARY KEY,
    user_id   text NOT NULL,
    device    smallint NOT NULL,
    key_id    bigint NOT NULL,
    key       bytea NOT NULL,
    signature bytea NOT NULL,
    UNIQUE (user_id, device, key_id),
    FOREIGN KEY (user_id, device) REFERENCES devices (user_id, device)
);
CREATE INDEX one_time_pq_prekeys_by_device ON one_time_pq_prekeys (user_id, device, seq);

-- The number of one-time keys of each kind a device holds. Claims decrement it in the same
-- statement that deletes the key, uploads increment it in the same transaction that inserts
-- them; its row lock orders the claims of one device, which makes "the count just fell
-- below the low-water mark" true for exactly one claim.
CREATE TABLE prekey_counts (
    user_id    text NOT NULL,
    device     smallint NOT NULL,
    prekeys    integer NOT NULL CHECK (prekeys >= 0),
    pq_prekeys integer NOT NULL CHECK (pq_prekeys >= 0),
    PRIMARY KEY (user_id, device),
    FOREIGN KEY (user_id, device) REFERENCES devices (user_id, device)
);

CREATE TABLE messages (
    seq              bigserial PRIMARY KEY,
    recipient_user   text NOT NULL,
    recipient_device smallint NOT NULL,
    id               bytea NOT NULL,
    sender_user      text NOT NULL,
    sender_device    smallint NOT NULL,
    ts               bigint NOT NULL,
    server_ts        bigint NOT NULL,
    type             integer NOT NULL,
    body             bytea NOT NULL,
    nonce            bytea NOT NULL,
    expires_ms       bigint NOT NULL,
    -- A retried store of the same (device, id) is ignored against this constraint.
    UNIQUE (recipient_user, recipient_device, id),
    FOREIGN KEY (recipient_user, recipient_device) REFERENCES devices (user_id, device)
);
-- A device's messages in seq order: drains and queue_state.
CREATE INDEX messages_by_device ON messages (recipient_user, recipient_device, seq);
CREATE INDEX messages_expiry ON messages (expires_ms);

-- The audit trail of key changes. Key ids and counts only: never key material.
CREATE TABLE key_events (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    user_id text NOT NULL,
    device  smallint NOT NULL,
    kind    text NOT NULL CHECK (kind IN (
        'register',                -- create_user: device 1 and its identity key
        'add_device',              -- a device linked to an existing user
        'remove_device',           -- the device and its identity key retired
        'signed_prekey_rotated',   -- a new signed pre-key (detail: key_id)
        'prekeys_uploaded',        -- one-time / last-resort keys stored (detail: key ids)
        'claim_without_prekey'     -- a bundle handed out without a one-time EC key
    )),
    detail  jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX key_events_by_device ON key_events (user_id, device, id);
