-- Schema version 2: identity keys compared in their canonical X25519 form (spec §3.3).
--
-- Version 1 stored the u of an xeddsa key as sent, so u with bit 255 set (or u >= p) was a
-- second identity beside the same key pair. From version 2 the relay stores
-- identity_x25519 canonical: bit 255 cleared, reduced mod p = 2^255 - 19. This step rewrites
-- the rows written before. (The ed25519 rows were canonical already: libsodium's output.)
--
-- Collisions: rows whose canonical forms are equal are one key pair registered twice. The
-- holder is the oldest active row of such a group (the oldest row when none is active); it
-- gets the canonical form. Every other active row of the group is retired as devices.remove
-- retires a device (its keys and stored messages deleted, a remove_device event). The
-- rows that are not holders keep their old form behind a 0xFF byte: 33 bytes, which no
-- 32-byte canonical form equals, so they claim nothing and identity_x25519 stays UNIQUE.

CREATE TEMP TABLE identity_canonical ON COMMIT DROP AS
WITH masked AS (
    SELECT user_id, device, removed_ms, created_ms,
           set_byte(identity_x25519, 31, get_byte(identity_x25519, 31) & 127) AS u
    FROM devices
    WHERE length(identity_x25519) = 32
), reduced AS (
    SELECT user_id, device, removed_ms, created_ms,
           CASE WHEN substring(u FROM 2) = '\xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f'::bytea AND get_byte(u, 0) >= 237
                -- u >= p: only p + k for k < 19 exists below 2^255; it reduces to k.
                THEN set_byte(decode(repeat('00', 32), 'hex'), 0, get_byte(u, 0) - 237)
                ELSE u
           END AS canonical
    FROM masked
)
SELECT user_id, device, removed_ms, canonical,
       row_number() OVER (
           PARTITION BY canonical
           ORDER BY removed_ms IS NOT NULL, created_ms, user_id, device
       ) = 1 AS holder
FROM reduced;

CREATE TEMP TABLE identity_retired ON COMMIT DROP AS
SELECT user_id, device FROM identity_canonical WHERE NOT holder AND removed_ms IS NULL;

UPDATE devices d
SET removed_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint
FROM identity_retired r
WHERE d.user_id = r.user_id AND d.device = r.device;

DELETE FROM one_time_prekeys k USING identity_retired r
WHERE k.user_id = r.user_id AND k.device = r.device;
DELETE FROM one_time_pq_prekeys k USING identity_retired r
WHERE k.user_id = r.user_id AND k.device = r.device;
DELETE FROM signed_prekeys k USING identity_retired r
WHERE k.user_id = r.user_id AND k.device = r.device;
DELETE FROM pq_last_resort_keys k USING identity_retired r
WHERE k.user_id = r.user_id AND k.device = r.device;
DELETE FROM prekey_counts k USING identity_retired r
WHERE k.user_id = r.user_id AND k.device = r.device;
DELETE FROM messages m USING identity_retired r
WHERE m.recipient_user = r.user_id AND m.recipient_device = r.device;

INSERT INTO key_events (user_id, device, kind, detail)
SELECT user_id, device, 'remove_device', '{"reason": "identity key held by an older device"}'
FROM identity_retired;

-- UNIQUE is checked row by row: free the canonical forms first, then hand them out.
UPDATE devices d
SET identity_x25519 = '\xff'::bytea || d.identity_x25519
FROM identity_canonical c
WHERE d.user_id = c.user_id AND d.device = c.device AND NOT c.holder;

UPDATE devices d
SET identity_x25519 = c.canonical
FROM identity_canonical c
WHERE d.user_id = c.user_id AND d.device = c.device AND c.holder
  AND d.identity_x25519 <> c.canonical;
