-- Every CDR gets the times a billing system expects (contract::merge):
--   setup_time   the earliest INVITE with a final response, whatever it was (answered, failed,
--                cancelled): failed and cancelled calls had no time at all before;
--   answer_time  the earliest answered INVITE (was start_time);
--   end_time     the latest BYE;
--   duration_ms  end_time - answer_time for an answered call, 0 for an unanswered one.
-- Existing rows are recomputed from cdr_record with the same rules as the worker's merge.

ALTER TABLE cdr RENAME COLUMN start_time TO answer_time;
ALTER INDEX cdr_start_time_idx RENAME TO cdr_answer_time_idx;
ALTER TABLE cdr ADD COLUMN setup_time timestamptz;

UPDATE cdr AS d
   SET setup_time  = a.setup_time,
       answer_time = a.answer_time,
       end_time    = a.end_time,
       duration_ms = CASE WHEN d.disposition <> 'answered' THEN 0
                          WHEN a.end_time >= a.answer_time
                          THEN floor((extract(epoch FROM a.end_time)
                                      - extract(epoch FROM a.answer_time)) * 1000)::bigint
                     END
  FROM (SELECT call_id,
               min(event_time) FILTER (WHERE kind IN ('answered_invite', 'failed_invite',
                                                      'cancelled_invite')) AS setup_time,
               min(event_time) FILTER (WHERE kind = 'answered_invite') AS answer_time,
               max(event_time) FILTER (WHERE kind = 'bye')             AS end_time
          FROM cdr_record
         GROUP BY call_id) AS a
 WHERE a.call_id = d.call_id;

-- "Failed calls in the last hour", "missed calls per trunk today": time-range scans on setup.
CREATE INDEX cdr_setup_time_idx ON cdr (setup_time);
