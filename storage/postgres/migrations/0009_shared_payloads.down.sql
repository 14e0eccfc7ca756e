-- Undo the shared payloads: each clear message naming one gets the payload appended to its
-- body (its delivered body, what version 8 stores), then the column, triggers and table go.
-- A sealed message or payload cannot be rewritten in SQL (the data keys are not at hand):
-- the messages naming a sealed payload, or sealed themselves and naming one, are deleted
-- (their senders had their `ok`; the devices will not receive them). Take a store with
-- encryption at rest down past this version only once its group messages are delivered.

DROP TRIGGER messages_payload_out ON messages;
DROP FUNCTION shared_payload_released();

UPDATE messages m SET body = m.body || p.body
FROM shared_payloads p
WHERE m.payload_id = p.payload_id AND m.key_id IS NULL AND p.key_id IS NULL;

DELETE FROM messages m
USING shared_payloads p
WHERE m.payload_id = p.payload_id AND (m.key_id IS NOT NULL OR p.key_id IS NOT NULL);

DROP INDEX messages_by_payload;
ALTER TABLE messages DROP COLUMN payload_id;
DROP TABLE shared_payloads;
