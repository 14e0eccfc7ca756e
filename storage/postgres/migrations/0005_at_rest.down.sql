-- Undo schema version 5, only while nothing depends on it: a sealed message would lose
-- its fields and blinded user ids would stay unreadable to version 4, so either refuses
-- (the step fails and the schema stays at version 5). Data keys that no row uses go.
-- A run that removes the whole schema (`relay migrate --to 0`) keeps nothing to be read,
-- so it is not refused: the sealed rows go first, as the later steps drop every table
-- (storage/postgres/migrate.py sets relay.migrate_target).
DO $$
BEGIN
    IF COALESCE(current_setting('relay.migrate_target', true), '') = '0' THEN
        DELETE FROM messages WHERE key_id IS NOT NULL;  -- the next steps drop the rest
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM messages WHERE key_id IS NOT NULL) THEN
        RAISE EXCEPTION 'schema version 5 cannot go down: stored messages are sealed'
            ' (encryption at rest); version 4 has no columns for them';
    END IF;
    IF EXISTS (SELECT 1 FROM at_rest) THEN
        RAISE EXCEPTION 'schema version 5 cannot go down: the user ids are blinded'
            ' (encryption at rest); version 4 would not find the users';
    END IF;
END
$$;

ALTER TABLE messages
    ALTER CONSTRAINT messages_recipient_user_recipient_device_fkey NOT DEFERRABLE;
ALTER TABLE prekey_counts
    ALTER CONSTRAINT prekey_counts_user_id_device_fkey NOT DEFERRABLE;
ALTER TABLE one_time_pq_prekeys
    ALTER CONSTRAINT one_time_pq_prekeys_user_id_device_fkey NOT DEFERRABLE;
ALTER TABLE one_time_prekeys
    ALTER CONSTRAINT one_time_prekeys_user_id_device_fkey NOT DEFERRABLE;
ALTER TABLE pq_last_resort_keys
    ALTER CONSTRAINT pq_last_resort_keys_user_id_device_fkey NOT DEFERRABLE;
ALTER TABLE signed_prekeys
    ALTER CONSTRAINT signed_prekeys_user_id_device_fkey NOT DEFERRABLE;
ALTER TABLE devices
    ALTER CONSTRAINT devices_user_id_fkey NOT DEFERRABLE;

ALTER TABLE messages
    DROP CONSTRAINT IF EXISTS messages_sealed_or_clear,  -- gone with a dropped column
    DROP COLUMN sealed,
    DROP COLUMN key_id,
    ALTER COLUMN sender_user SET NOT NULL,
    ALTER COLUMN sender_device SET NOT NULL,
    ALTER COLUMN ts SET NOT NULL,
    ALTER COLUMN type SET NOT NULL,
    ALTER COLUMN body SET NOT NULL,
    ALTER COLUMN nonce SET NOT NULL;

DROP TABLE at_rest;
DROP TABLE data_keys;
