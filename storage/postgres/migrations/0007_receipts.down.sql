-- Undo schema version 7: stored messages lose their receipt requests, and the receipts
-- still stored are deleted (their `receipt` column marks them, sealed or not), since a
-- relay of version 6 would take them for messages.
DELETE FROM messages WHERE receipt = '\x00'::bytea;
ALTER TABLE messages DROP COLUMN receipt;
