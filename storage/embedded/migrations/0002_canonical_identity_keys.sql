-- Schema version 2 of the embedded store: identity keys compared in their canonical X25519
-- form (spec §3.3), as in storage/postgres/migrations/0002_canonical_identity_keys.up.sql,
-- which explains the rule: bit 255 cleared, reduced mod p = 2^255 - 19. The oldest active
-- row of a group of rows with one canonical form holds it, the other active rows of the
-- group are retired (keys and stored messages deleted), and the rows that do not hold it
-- keep their old form behind a 0xFF byte (33 bytes: they claim nothing).
--
-- SQLite has no byte arithmetic on blobs: a byte is read through hex() and a lookup of its
-- two digits, and written back as CAST(char(n) AS BLOB), one byte for every n below 128.

CREATE TEMP TABLE identity_masked AS
SELECT user, device, removed_ms, created_ms,
       CAST(substr(identity_x25519, 1, 31) || CAST(char(
           ((instr('0123456789ABCDEF', substr(hex(identity_x25519), 63, 1)) - 1) & 7) * 16
           + instr('0123456789ABCDEF', substr(hex(identity_x25519), 64, 1)) - 1
       ) AS BLOB) AS BLOB) AS u
FROM devices
WHERE length(identity_x25519) = 32;

CREATE TEMP TABLE identity_canonical AS
SELECT user, device, removed_ms, canonical,
       row_number() OVER (
           PARTITION BY canonical
           ORDER BY removed_ms IS NOT NULL, created_ms, user, device
       ) = 1 AS holder
FROM (
    SELECT user, device, removed_ms, created_ms,
           CASE WHEN substr(u, 2) = X'FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF7F' AND substr(hex(u), 1, 2) >= 'ED'
                -- u >= p: only p + k for k < 19 exists below 2^255, and it reduces to k.
                THEN CAST(CAST(char(
                    (instr('0123456789ABCDEF', substr(hex(u), 1, 1)) - 1) * 16
                    + instr('0123456789ABCDEF', substr(hex(u), 2, 1)) - 1 - 237
                ) AS BLOB) || zeroblob(31) AS BLOB)
                ELSE u
           END AS canonical
    FROM identity_masked
);

CREATE TEMP TABLE identity_retired AS
SELECT user, device FROM identity_canonical WHERE NOT holder AND removed_ms IS NULL;

UPDATE devices
SET removed_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000
WHERE (user, device) IN (SELECT user, device FROM identity_retired);

DELETE FROM signed_prekeys
WHERE (user, device) IN (SELECT user, device FROM identity_retired);
DELETE FROM pq_last_resort_keys
WHERE (user, device) IN (SELECT user, device FROM identity_retired);
DELETE FROM one_time_prekeys
WHERE (user, device) IN (SELECT user, device FROM identity_retired);
DELETE FROM one_time_pq_prekeys
WHERE (user, device) IN (SELECT user, device FROM identity_retired);
DELETE FROM messages
WHERE (recipient_user, recipient_device) IN (SELECT user, device FROM identity_retired);

-- Free the canonical forms first (the unique index over active rows), then hand them out.
UPDATE devices
SET identity_x25519 = CAST(X'FF' || identity_x25519 AS BLOB)
WHERE (user, device) IN (SELECT user, device FROM identity_canonical WHERE NOT holder);

UPDATE devices
SET identity_x25519 = c.canonical
FROM identity_canonical c
WHERE devices.user = c.user AND devices.device = c.device AND c.holder
  AND devices.identity_x25519 <> c.canonical;

DROP TABLE identity_masked;
DROP TABLE identity_canonical;
DROP TABLE identity_retired;
