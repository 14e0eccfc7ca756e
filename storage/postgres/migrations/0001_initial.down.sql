-- Undo schema version 1: every table it created, dependents first.
DROP TABLE key_events;
DROP TABLE messages;
DROP TABLE prekey_counts;
DROP TABLE one_time_pq_prekeys;
DROP TABLE one_time_prekeys;
DROP TABLE pq_last_resort_keys;
DROP TABLE signed_prekeys;
DROP TABLE devices;
DROP TABLE users;
