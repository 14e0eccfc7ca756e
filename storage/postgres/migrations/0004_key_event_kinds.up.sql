-- Schema version 4: the audit trail records every bundle handed out (prekey_claimed, with
-- the requester) and the retirement of a removed device's identity key, as the embedded
-- store does (storage/audit_events.py names the kinds and their details). The index on
-- `at` serves the purge of rows older than --audit-retention and the `--since` reads.
ALTER TABLE key_events DROP CONSTRAINT key_events_kind_check;
ALTER TABLE key_events ADD CONSTRAINT key_events_kind_check CHECK (kind IN (
    'register',                -- create_user: device 1 and its identity key
    'add_device',              -- a device linked to an existing user
    'remove_device',           -- the device removed, its keys and stored messages deleted
    'identity_key_retired',    -- the removed device's identity key, never usable again
    'signed_prekey_rotated',   -- a new signed pre-key (detail: key_id)
    'prekeys_uploaded',        -- one-time / last-resort keys stored (detail: counts, key ids)
    'prekey_claimed',          -- a bundle with a one-time EC key (detail: key ids, requester)
    'claim_without_prekey'     -- a bundle without one (detail: key ids, requester, reason)
));
CREATE INDEX key_events_by_time ON key_events (at);
