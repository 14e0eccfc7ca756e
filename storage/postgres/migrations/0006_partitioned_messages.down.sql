-- Undo schema version 6: `messages` becomes one plain table again, exactly as version 5
-- left it (same columns in the same order, constraint, index and trigger names), its rows
-- moved back under an ACCESS EXCLUSIVE lock. seq values are kept, and the sequence goes on
-- from where it was.

LOCK TABLE messages IN ACCESS EXCLUSIVE MODE;

CREATE TABLE messages_unpartitioned (
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
);

INSERT INTO messages_unpartitioned (
    seq, recipient_user, recipient_device, id, sender_user, sender_device, ts, server_ts,
    type, body, nonce, expires_ms, key_id, sealed
)
SELECT seq, recipient_user, recipient_device, id, sender_user, sender_device, ts, server_ts,
    type, body, nonce, expires_ms, key_id, sealed
FROM messages;

ALTER SEQUENCE messages_seq_seq OWNED BY NONE;
DROP TABLE messages;  -- its partitions, indexes and triggers with it
ALTER TABLE messages_unpartitioned RENAME TO messages;
ALTER SEQUENCE messages_seq_seq OWNED BY messages.seq;

ALTER TABLE messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (seq),
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
CREATE INDEX messages_by_device ON messages (recipient_user, recipient_device, seq);
CREATE INDEX messages_expiry ON messages (expires_ms);

CREATE TRIGGER messages_counted_in
AFTER INSERT ON messages
FOR EACH ROW EXECUTE FUNCTION queue_counts_added();

CREATE TRIGGER messages_counted_out
AFTER DELETE ON messages
FOR EACH ROW EXECUTE FUNCTION queue_counts_removed();
