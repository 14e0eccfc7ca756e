-- Undo schema version 4: the rows of the kinds it added go, the older check comes back.
DROP INDEX key_events_by_time;
DELETE FROM key_events WHERE kind IN ('identity_key_retired', 'prekey_claimed');
ALTER TABLE key_events DROP CONSTRAINT key_events_kind_check;
ALTER TABLE key_events ADD CONSTRAINT key_events_kind_check CHECK (kind IN (
    'register',
    'add_device',
    'remove_device',
    'signed_prekey_rotated',
    'prekeys_uploaded',
    'claim_without_prekey'
));
