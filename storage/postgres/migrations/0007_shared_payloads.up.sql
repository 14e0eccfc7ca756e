-- Shared payloads of `send.multi` frames, stored once however many devices they reach
-- (docs/protocol.md, Multi-recipient send).
--
-- * shared_payloads: one row per payload, named by a random 16-byte id; clear (key_id NULL,
--   body) or sealed (key_id names the data key, sealed holds the body;
--   storage/at_rest/sealing.py), with the same foreign key to data_keys as messages, so a
--   retired key is not deleted while a payload needs it (storage/postgres/data_keys.py).
--   `refs` counts the messages rows naming it, kept by the triggers below; the row goes
--   with its last message (an ack, a purge, a removed device). An expired payload is
--   purged with the messages in any case.
-- * messages.payload_id: NULL for a message with its whole body in its row; else the
--   row's body (or sealed body) is the device's header, delivered followed by the payload.
--   Added to the partitioned table, it reaches every partition; the row triggers are
--   cloned onto each partition like those of queue_counts.

CREATE TABLE shared_payloads (
    payload_id bytea PRIMARY KEY,
    body       bytea,
    key_id     integer REFERENCES data_keys (id),
    sealed     bytea,
    expires_ms bigint NOT NULL,
    refs       integer NOT NULL DEFAULT 0,
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

ALTER TABLE messages ADD COLUMN payload_id bytea;

CREATE FUNCTION shared_payload_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE shared_payloads SET refs = refs + 1 WHERE payload_id = NEW.payload_id;
    RETURN NULL;
END
$$;

-- The UPDATE comes first: it waits for the row lock of a concurrent count-down and then
-- counts from that one's result, so the last of them sees 0 and deletes the row.
CREATE FUNCTION shared_payload_removed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    remaining integer;
BEGIN
    UPDATE shared_payloads SET refs = refs - 1 WHERE payload_id = OLD.payload_id
    RETURNING refs INTO remaining;
    IF remaining IS NOT NULL AND remaining <= 0 THEN
        DELETE FROM shared_payloads WHERE payload_id = OLD.payload_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_payload_in
AFTER INSERT ON messages
FOR EACH ROW WHEN (NEW.payload_id IS NOT NULL)
EXECUTE FUNCTION shared_payload_added();

CREATE TRIGGER messages_payload_out
AFTER DELETE ON messages
FOR EACH ROW WHEN (OLD.payload_id IS NOT NULL)
EXECUTE FUNCTION shared_payload_removed();
