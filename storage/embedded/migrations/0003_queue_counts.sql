-- Schema version 3: the number of stored envelopes of each recipient device, kept by
-- triggers on messages, so that a store checks --max-stored-messages with one lookup
-- instead of counting the device's rows (as many as its queue holds). One writer thread
-- runs every job, so the count a job reads is exact.

CREATE TABLE queue_counts (
    recipient_user   TEXT NOT NULL,
    recipient_device INTEGER NOT NULL,
    stored           INTEGER NOT NULL,
    PRIMARY KEY (recipient_user, recipient_device)
) WITHOUT ROWID;

INSERT INTO queue_counts (recipient_user, recipient_device, stored)
SELECT recipient_user, recipient_device, COUNT(*)
FROM messages
GROUP BY recipient_user, recipient_device;

CREATE TRIGGER messages_counted_in AFTER INSERT ON messages
BEGIN
    INSERT INTO queue_counts (recipient_user, recipient_device, stored)
    VALUES (NEW.recipient_user, NEW.recipient_device, 1)
    ON CONFLICT (recipient_user, recipient_device) DO UPDATE SET stored = stored + 1;
END;

CREATE TRIGGER messages_counted_out AFTER DELETE ON messages
BEGIN
    UPDATE queue_counts SET stored = stored - 1
    WHERE recipient_user = OLD.recipient_user AND recipient_device = OLD.recipient_device;
END;
