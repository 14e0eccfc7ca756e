-- Undo schema version 2: identity_x25519 back to the form version 1 stored (an xeddsa key's
-- u as sent, libsodium's output for ed25519). Devices retired by the up step stay retired:
-- their keys and messages are gone.
--
-- UNIQUE is checked row by row: every row to rewrite first moves to a 33-byte form no
-- other row holds, then all take their version 1 form, which were unique then.
UPDATE devices
SET identity_x25519 = '\xfe'::bytea || substring(identity_key FROM 2)
WHERE key_scheme = 'xeddsa' AND length(identity_x25519) = 32;

UPDATE devices
SET identity_x25519 = substring(identity_x25519 FROM 2)
WHERE length(identity_x25519) = 33;
