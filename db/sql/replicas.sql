-- Streaming read replicas (db/replicas.py): where the primary's WAL is, how far each replica
-- has replayed it, and the one read a hot standby cannot do the primary's way.
-- Lag is measured by LSN, not by `now() - pg_last_xact_replay_timestamp()`: on an idle
-- primary that timestamp is the last commit's, so a replica that is fully caught up would
-- look minutes behind. db/replicas.py turns LSN distances into seconds on its own clock.

-- primary_position --
-- Where the primary's WAL ends now (written, not merely inserted): what a caught-up replica
-- has replayed. NULL on a server that is itself in recovery (pg_current_wal_lsn() raises there).
SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END

-- write_position --
-- After a write's commit: the end of the WAL inserted so far, which covers the commit record
-- even with synchronous_commit off (pg_current_wal_lsn() may not have reached it yet). A read
-- that passes it back sees the write on any replica that has replayed this far.
SELECT pg_current_wal_insert_lsn()::text

-- replay_position --
-- A replica's side: whether it is a standby at all, and the last WAL position it replayed
-- (what its queries see). A promoted or misconfigured "replica" answers in_recovery false.
SELECT pg_is_in_recovery() AS in_recovery, pg_last_wal_replay_lsn()::text AS replayed

-- text_vector --
-- The shared text-vector cache read on a replica: text_vectors.sql's `cached` also refreshes
-- the row's recency (an UPDATE), which a hot standby refuses; this one only reads.
SELECT v.embedding FROM pgclip.text_vectors v
WHERE v.model_id = %(model_id)s AND md5(v.text) = md5(%(text)s) AND v.text = %(text)s
