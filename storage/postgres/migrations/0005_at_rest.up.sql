-- Schema version 5: encryption at rest (storage/at_rest).
--
-- data_keys: the data keys and the index key, wrapped by the master key. Ids are chosen by
--   the caller (the next free one), so two nodes creating a key at once collide on the
--   primary key; the partial unique index allows one active key of each purpose (the index
--   key is always active: at most one index key).
-- at_rest: one row once the user ids of every table are blinded (keyed hashes, see
--   storage/postgres/clear_data.py); no row while they are in the clear.
-- messages: a sealed row has key_id (the data key) and `sealed`, and its sender, time,
--   type, body and nonce NULL; a clear row (from before, or with encryption off) has key_id
--   NULL (key id 0 to the code) and those fields as before. The check keeps a row one or
--   the other. Adding the columns rewrites nothing (no default); the check reads every row.
--
-- messages.key_id REFERENCES data_keys: the insert's foreign-key check takes FOR KEY SHARE
-- on the key's row, which the deletion of a retired key (FOR UPDATE through its DELETE)
-- waits for, and the other way round; the argument is next to the DELETE in
-- storage/postgres/data_keys.py. Clear rows (NULL) are not checked: without encryption the
-- insert costs what it did. No index on key_id: only the purge and `relay keys status` look
-- rows up by key, and they scan.
--
-- The foreign keys between the user tables become DEFERRABLE INITIALLY IMMEDIATE: checked
-- as before by every statement, except in a transaction that defers them, which is what the
-- blinding of user ids does (SET CONSTRAINTS ALL DEFERRED) to rewrite users, devices and the
-- tables that point at them with one plain UPDATE each, checked at commit. ON UPDATE CASCADE
-- was the other way; it was not chosen because it rewrites child rows one RI trigger call at
-- a time, leaves the tables without a foreign key (queue_counts, key_events) to separate
-- statements anyway, and would let any future UPDATE of a user id ripple silently.

CREATE TABLE data_keys (
    id            integer PRIMARY KEY CHECK (id > 0),
    purpose       text NOT NULL CHECK (purpose IN ('data', 'index')),
    state         text NOT NULL CHECK (state IN ('active', 'retired')),
    created_ms    bigint NOT NULL,
    retired_ms    bigint,
    master_key_id text NOT NULL,
    wrapped       bytea NOT NULL,
    CHECK ((state = 'retired') = (retired_ms IS NOT NULL)),
    CHECK (purpose = 'data' OR state = 'active')
);
CREATE UNIQUE INDEX data_keys_one_active ON data_keys (purpose) WHERE state = 'active';

CREATE TABLE at_rest (
    id         smallint PRIMARY KEY CHECK (id = 1),  -- one row at most
    blinded_ms bigint NOT NULL                       -- when the user ids were blinded
);

ALTER TABLE messages
    ADD COLUMN key_id integer REFERENCES data_keys (id),
    ADD COLUMN sealed bytea,
    ALTER COLUMN sender_user DROP NOT NULL,
    ALTER COLUMN sender_device DROP NOT NULL,
    ALTER COLUMN ts DROP NOT NULL,
    ALTER COLUMN type DROP NOT NULL,
    ALTER COLUMN body DROP NOT NULL,
    ALTER COLUMN nonce DROP NOT NULL,
    ADD CONSTRAINT messages_sealed_or_clear CHECK (
        CASE WHEN key_id IS NULL
            THEN sealed IS NULL AND sender_user IS NOT NULL AND sender_device IS NOT NULL
                AND ts IS NOT NULL AND type IS NOT NULL AND body IS NOT NULL
                AND nonce IS NOT NULL
            ELSE sealed IS NOT NULL AND sender_user IS NULL AND sender_device IS NULL
                AND ts IS NULL AND type IS NULL AND body IS NULL AND nonce IS NULL
        END
    );

ALTER TABLE devices
    ALTER CONSTRAINT devices_user_id_fkey DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE signed_prekeys
    ALTER CONSTRAINT signed_prekeys_user_id_device_fkey DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE pq_last_resort_keys
    ALTER CONSTRAINT pq_last_resort_keys_user_id_device_fkey DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE one_time_prekeys
    ALTER CONSTRAINT one_time_prekeys_user_id_device_fkey DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE one_time_pq_prekeys
    ALTER CONSTRAINT one_time_pq_prekeys_user_id_device_fkey DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE prekey_counts
    ALTER CONSTRAINT prekey_counts_user_id_device_fkey DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE messages
    ALTER CONSTRAINT messages_recipient_user_recipient_device_fkey
    DEFERRABLE INITIALLY IMMEDIATE;
