-- Undo schema version 8: the backups go, and so do their audit events; the older check on
-- the event kinds comes back.
DELETE FROM key_events WHERE kind IN ('backup_put', 'backup_get', 'backup_delete');
ALTER TABLE key_events DROP CONSTRAINT key_events_kind_check;
ALTER TABLE key_events ADD CONSTRAINT key_events_kind_check CHECK (kind IN (
    'register',
    'add_device',
    'remove_device',
    'identity_key_retired',
    'signed_prekey_rotated',
    'prekeys_uploaded',
    'prekey_claimed',
    'claim_without_prekey'
));
DROP TABLE backups;
