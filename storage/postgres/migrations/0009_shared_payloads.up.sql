-- Shared payloads of `send.multi` frames, stored once however many devices they reach
-- (docs/protocol.md, Multi-recipient send).
--
-- * shared_payloads: one row per payload, named by a random 16-byte id; clear (key_id NULL,
--   body) or sealed (key_id names the data key, sealed holds the body;
--   storage/at_rest/sealing.py), with the same foreign key to data_keys as messages, so a
--   retired key is not deleted while a payload needs it (storage/postgres/data_keys.py).
-- * messages.payload_id: NULL for a message with its whole body in its row; else the
--   row's body (or sealed body) is the device's header, delivered followed by the payload.
--   Added to the partitioned table, it reaches every partition, as do its index and the
--   row trigger (cloned onto each partition like those of queue_counts).
--
-- Concurrency argument (no reference count: a counter row updated once per device would
-- leave a dead copy of the payload's row per device under MVCC):
-- * messages.payload_id references shared_payloads: an insert of a message takes FOR KEY
--   SHARE on its payload's row until it commits, and a payload cannot be deleted under a
--   message naming it (the delete waits for the insert, then fails its foreign-key check).
-- * The row trigger deletes the payload when the deleted message was the last naming it,
--   in a subtransaction whose foreign-key failure (a message stored meanwhile) is ignored:
--   an ack never fails for it. Two transactions deleting the last two messages at once
--   may each see the other's still: the payload then stays until the purge of expired
--   payloads (it expires with its messages), which deletes only those no message names.

CREATE TABLE shared_payloads (
    payload_id bytea PRIMARY KEY,
    body       bytea,
    key_id     integer REFERENCES data_keys (id),
    sealed     bytea,
    expires_ms bigint NOT NULL,
    CONSTRAINT shared_payloads_sealed_or_clear CHECK (
        CASE WHEN key_id IS NULL
            THEN sealed IS NULL AND body IS NOT NULL
            ELSE sealed IS NOT NULL AND body IS NULL
        END
    )
);
CREATE INDEX shared_payloads_expiry ON shared_payloads (expires_ms);
-- Clear payloads, for their conversion to sealed ones (clear_data.py).
CREATE INDEX shared_payloads_clear ON shared_payloads (payload_id) WHERE key_id IS NULL;

ALTER TABLE messages ADD COLUMN payload_id bytea
    CONSTRAINT messages_payload_id_fkey REFERENCES shared_payloads (payload_id);
-- The messages naming a payload: the trigger's and the foreign key's lookups.
CREATE INDEX messages_by_payload ON messages (payload_id) WHERE payload_id IS NOT NULL;

CREATE FUNCTION shared_payload_released() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        DELETE FROM shared_payloads p
        WHERE p.payload_id = OLD.payload_id
          AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.payload_id = OLD.payload_id);
    EXCEPTION WHEN foreign_key_violation THEN
        NULL;  -- a message naming it was stored meanwhile: it stays
    END;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_payload_out
AFTER DELETE ON messages
FOR EACH ROW WHEN (OLD.payload_id IS NOT NULL)
EXECUTE FUNCTION shared_payload_released();
