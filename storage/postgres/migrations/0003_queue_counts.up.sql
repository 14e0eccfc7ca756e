-- Schema version 3: the number of stored envelopes of each recipient device, kept by
-- triggers on messages, so that the insert checks --max-stored-messages with one index
-- lookup instead of counting the device's rows (as many as its queue holds).
--
-- Row-level triggers: the writers insert and delete one row per statement (executemany),
-- where a statement-level trigger with transition tables cost a third of the store and ack
-- throughput and a row-level one about a sixth (store-level A/B, in the commit message of
-- this migration); if the writers move to multi-row statements or COPY, a
-- statement-level trigger that groups by device becomes the cheaper one.
--
-- Concurrency: a counter row is written under the same locks as the messages rows that
-- change it: the batch writer holds the device's advisory lock (storage/postgres/messages.py),
-- so two batches never interleave on one counter and the insert's read of it is exact. The
-- purge and devices.remove write counters without that lock; a counter row lock they wait
-- on is held only until the writing transaction commits, and a deadlock with a batch (each
-- holding a counter the other wants, possible only when both touch the same two devices in
-- opposite orders) is broken by PostgreSQL and retried like the other deadlocks of a batch.

CREATE TABLE queue_counts (
    recipient_user   text NOT NULL,
    recipient_device smallint NOT NULL,
    stored           bigint NOT NULL,
    PRIMARY KEY (recipient_user, recipient_device)
);

-- No writer may change messages between the count and the triggers' creation.
LOCK TABLE messages IN SHARE MODE;

INSERT INTO queue_counts (recipient_user, recipient_device, stored)
SELECT recipient_user, recipient_device, count(*)
FROM messages
GROUP BY recipient_user, recipient_device;

-- An update first: the counter exists for every device that ever had a message stored,
-- and a plain update costs less than an upsert's speculative insertion.
CREATE FUNCTION queue_counts_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE queue_counts SET stored = stored + 1
    WHERE recipient_user = NEW.recipient_user AND recipient_device = NEW.recipient_device;
    IF NOT FOUND THEN
        INSERT INTO queue_counts AS c (recipient_user, recipient_device, stored)
        VALUES (NEW.recipient_user, NEW.recipient_device, 1)
        ON CONFLICT (recipient_user, recipient_device) DO UPDATE SET stored = c.stored + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION queue_counts_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE queue_counts SET stored = stored - 1
    WHERE recipient_user = OLD.recipient_user AND recipient_device = OLD.recipient_device;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_counted_in
AFTER INSERT ON messages
FOR EACH ROW EXECUTE FUNCTION queue_counts_added();

CREATE TRIGGER messages_counted_out
AFTER DELETE ON messages
FOR EACH ROW EXECUTE FUNCTION queue_counts_removed();
