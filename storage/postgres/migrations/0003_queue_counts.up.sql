-- Schema version 3: the number of stored envelopes of each recipient device, kept by
-- triggers on messages, so that the insert checks --max-stored-messages with one index
-- lookup instead of counting the device's rows (as many as its queue holds).
--
-- Concurrency: the triggers are statement-level, one upsert or update per device a
-- statement touched, so a group commit's executemany or a COPY pays per statement, not per
-- row of the table. A counter row is written under the same locks as the messages rows that
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

CREATE FUNCTION queue_counts_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queue_counts AS c (recipient_user, recipient_device, stored)
    SELECT recipient_user, recipient_device, count(*)
    FROM added
    GROUP BY recipient_user, recipient_device
    ORDER BY recipient_user, recipient_device
    ON CONFLICT (recipient_user, recipient_device)
    DO UPDATE SET stored = c.stored + excluded.stored;
    RETURN NULL;
END
$$;

CREATE FUNCTION queue_counts_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE queue_counts AS c
    SET stored = c.stored - gone.n
    FROM (
        SELECT recipient_user, recipient_device, count(*) AS n
        FROM removed
        GROUP BY recipient_user, recipient_device
    ) AS gone
    WHERE c.recipient_user = gone.recipient_user
      AND c.recipient_device = gone.recipient_device;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_counted_in
AFTER INSERT ON messages
REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION queue_counts_added();

CREATE TRIGGER messages_counted_out
AFTER DELETE ON messages
REFERENCING OLD TABLE AS removed
FOR EACH STATEMENT EXECUTE FUNCTION queue_counts_removed();
