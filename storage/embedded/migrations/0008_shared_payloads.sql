-- Schema version 8 of the embedded store: the shared payloads of `send.multi` frames, stored
-- once however many devices they reach (docs/protocol.md, Multi-recipient send).
--
-- * shared_payloads: one row per payload, named by a random 16-byte id. Like a message row it
--   is either clear (key_id 0, body) or sealed (key_id names the data key, sealed holds the
--   body; storage/at_rest/sealing.py). `refs` counts the messages rows that name it, kept by
--   the triggers below; the row goes with its last message (an ack, a purge, a removed
--   device), and an expired one is purged with the messages in any case.
-- * messages.payload_id: NULL for a message with its whole body in its row; else the row's
--   body (or sealed body) is the device's header, delivered followed by the payload.
--
-- One writer thread runs every job (storage/embedded/database.py), so the counts are exact.

CREATE TABLE shared_payloads (
    payload_id BLOB PRIMARY KEY,
    body       BLOB,
    key_id     INTEGER NOT NULL DEFAULT 0,  -- 0: the body is in the clear column
    sealed     BLOB,
    expires_ms INTEGER NOT NULL,
    refs       INTEGER NOT NULL DEFAULT 0,
    CHECK (
        (key_id = 0 AND sealed IS NULL AND body IS NOT NULL)
        OR (key_id <> 0 AND sealed IS NOT NULL AND body IS NULL)
    )
) WITHOUT ROWID;
CREATE INDEX shared_payloads_expiry ON shared_payloads (expires_ms);

ALTER TABLE messages ADD COLUMN payload_id BLOB;

CREATE TRIGGER messages_payload_in AFTER INSERT ON messages
WHEN NEW.payload_id IS NOT NULL
BEGIN
    UPDATE shared_payloads SET refs = refs + 1 WHERE payload_id = NEW.payload_id;
END;

CREATE TRIGGER messages_payload_out AFTER DELETE ON messages
WHEN OLD.payload_id IS NOT NULL
BEGIN
    UPDATE shared_payloads SET refs = refs - 1 WHERE payload_id = OLD.payload_id;
    DELETE FROM shared_payloads WHERE payload_id = OLD.payload_id AND refs <= 0;
END;
