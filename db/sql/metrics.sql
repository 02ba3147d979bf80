-- What /metrics reads from the database at scrape time (pgclip.db.metrics).
-- Sections start with `-- name --`; pgclip.db.queries loads them by name.

-- scrape_timeout --
-- For this transaction only: a scrape must answer within Prometheus's scrape timeout
-- (10 s by default) even when the database is slow or a lock holds the queue, so the
-- query gives up after this long and /metrics reports the database as down instead.
SELECT set_config('statement_timeout', %(milliseconds)s, true);

-- queue_depth --
-- Jobs per model and state, every state of every model (0 when there are none), so that
-- an alert on a series never sees it vanish when a state empties; and each row's oldest
-- enqueued_at as an age in seconds (the pending row's is how long the queue has waited).
-- One statement per scrape: the counts come from one pass over embedding_jobs.
SELECT m.name AS model, m.pretrained, s.state, count(j.id) AS jobs,
       extract(epoch FROM now() - min(j.enqueued_at))::float8 AS oldest_seconds
FROM pgclip.models m
CROSS JOIN unnest(ARRAY['pending', 'leased', 'done', 'failed']) AS s(state)  -- embedding_jobs' states
LEFT JOIN pgclip.embedding_jobs j ON j.model_id = m.id AND j.state = s.state
GROUP BY m.id, m.name, m.pretrained, s.state
ORDER BY m.id, s.state;
