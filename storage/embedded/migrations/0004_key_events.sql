-- Schema version 4 of the embedded store: the audit trail of key events, as the PostgreSQL
-- store's key_events (storage/postgres/migrations/0001 and 0004), with the same kinds and
-- details (storage/audit_events.py). Key ids, counts and bundle requesters only: never key
-- material, never message metadata. Written in the job of the change it records; rows
-- older than --audit-retention are deleted by the purge task.
CREATE TABLE key_events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms  INTEGER NOT NULL,
    user   TEXT NOT NULL,
    device INTEGER NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN (
        'register', 'add_device', 'remove_device', 'identity_key_retired',
        'signed_prekey_rotated', 'prekeys_uploaded', 'prekey_claimed', 'claim_without_prekey'
    )),
    detail TEXT NOT NULL DEFAULT '{}'  -- a JSON object
);
CREATE INDEX key_events_by_user ON key_events (user, id);
CREATE INDEX key_events_by_time ON key_events (at_ms);
