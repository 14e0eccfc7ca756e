-- Undo schema version 3: the per-device counts and the triggers that keep them.
DROP TRIGGER messages_counted_out ON messages;
DROP TRIGGER messages_counted_in ON messages;
DROP FUNCTION queue_counts_removed();
DROP FUNCTION queue_counts_added();
DROP TABLE queue_counts;
