-- Schema version 6: stored messages partitioned by hash of the recipient user.
--
-- `messages` becomes a declaratively partitioned table of 16 hash partitions of
-- recipient_user (messages_p00 .. messages_p15, a number fixed here: changing it means
-- another migration that moves every row). Each partition has its own indexes, so the
-- expiry index the purge walks, the device index of the drains and the unique index of the
-- retried-store dedup are each a sixteenth of the table's, and autovacuum works on one
-- partition at a time after a purge instead of on the whole table.
--
-- Why hash and not time ranges of expires_ms: every unique index of a partitioned table
-- must hold the partition key. By recipient_user, the dedup key (recipient_user,
-- recipient_device, id) already does. By expires_ms it would become (..., id, expires_ms),
-- and a retried store of the same envelope, whose expiry is computed again from a later
-- server time, would go in twice. The primary key becomes (recipient_user, seq): seq is
-- still drawn from the one sequence messages_seq_seq for every partition, so a device's
-- rows keep their order (its rows all live in one partition, in messages_by_device).
--
-- Everything else is kept as version 5 had it, under the same names: the foreign keys to
-- devices (DEFERRABLE INITIALLY IMMEDIATE, for the blinding of user ids) and to data_keys
-- (FOR KEY SHARE on the key's row, which delete_retired waits for), the sealed-or-clear
-- check, and the queue_counts triggers of 0003 (row triggers on the partitioned table,
-- which PostgreSQL clones onto each partition).
--
-- The rows are moved under an ACCESS EXCLUSIVE lock (no reader or writer sees the table
-- half moved; the step runs in one transaction with its bookkeeping row). The new table has
-- no triggers while the rows are copied, so queue_counts, which already counts them, is left
-- as it is; the constraints and indexes are built once the rows are in.

LOCK TABLE messages IN ACCESS EXCLUSIVE MODE;

CREATE TABLE messages_partitioned (
    seq              bigint NOT NULL DEFAULT nextval('messages_seq_seq'),
    recipient_user   text NOT NULL,
    recipient_device smallint NOT NULL,
    id               bytea NOT NULL,
    sender_user      text,
    sender_device    smallint,
    ts               bigint,
    server_ts        bigint NOT NULL,
    type             integer,
    body             bytea,
    nonce            bytea,
    expires_ms       bigint NOT NULL,
    key_id           integer,
    sealed           bytea
) PARTITION BY HASH (recipient_user);

DO $$
BEGIN
    FOR i IN 0..15 LOOP
        EXECUTE format(
            'CREATE TABLE messages_p%s PARTITION OF messages_partitioned'
            ' FOR VALUES WITH (MODULUS 16, REMAINDER %s)',
            lpad(i::text, 2, '0'), i
        );
    END LOOP;
END
$$;

INSERT INTO messages_partitioned (
    seq, recipient_user, recipient_device, id, sender_user, sender_device, ts, server_ts,
    type, body, nonce, expires_ms, key_id, sealed
)
SELECT seq, recipient_user, recipient_device, id, sender_user, sender_device, ts, server_ts,
    type, body, nonce, expires_ms, key_id, sealed
FROM messages;

ALTER SEQUENCE messages_seq_seq OWNED BY NONE;
DROP TABLE messages;
ALTER TABLE messages_partitioned RENAME TO messages;
ALTER SEQUENCE messages_seq_seq OWNED BY messages.seq;

ALTER TABLE messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (recipient_user, seq),
    -- A retried store of the same (device, id) is ignored against this constraint.
    ADD CONSTRAINT messages_recipient_user_recipient_device_id_key
        UNIQUE (recipient_user, recipient_device, id),
    ADD CONSTRAINT messages_recipient_user_recipient_device_fkey
        FOREIGN KEY (recipient_user, recipient_device) REFERENCES devices (user_id, device)
        DEFERRABLE INITIALLY IMMEDIATE,
    ADD CONSTRAINT messages_key_id_fkey FOREIGN KEY (key_id) REFERENCES data_keys (id),
    ADD CONSTRAINT messages_sealed_or_clear CHECK (
        CASE WHEN key_id IS NULL
            THEN sealed IS NULL AND sender_user IS NOT NULL AND sender_device IS NOT NULL
                AND ts IS NOT NULL AND type IS NOT NULL AND body IS NOT NULL
                AND nonce IS NOT NULL
            ELSE sealed IS NOT NULL AND sender_user IS NULL AND sender_device IS NULL
                AND ts IS NULL AND type IS NULL AND body IS NULL AND nonce IS NULL
        END
    );
-- A device's messages in seq order: drains and queue_state.
CREATE INDEX messages_by_device ON messages (recipient_user, recipient_device, seq);
-- Each partition's own expiry index: the purge walks them one partition at a time.
CREATE INDEX messages_expiry ON messages (expires_ms);
-- The clear rows in seq order, for their conversion to sealed rows (clear_data.py), which
-- walked the primary key (seq) before; with (recipient_user, seq) that walk would read every
-- partition whole for each batch. Sealed rows, all of them once the store is converted,
-- are not in it, so their inserts do not write it.
CREATE INDEX messages_clear ON messages (seq) WHERE key_id IS NULL;

CREATE TRIGGER messages_counted_in
AFTER INSERT ON messages
FOR EACH ROW EXECUTE FUNCTION queue_counts_added();

CREATE TRIGGER messages_counted_out
AFTER DELETE ON messages
FOR EACH ROW EXECUTE FUNCTION queue_counts_removed();
