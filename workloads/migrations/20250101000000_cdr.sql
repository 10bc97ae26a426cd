-- cdr-worker schema: every distinct record of a call, and the CDR merged from them.
--
-- `cdr_record` holds each record once, keyed by its content-addressed Nats-Msg-Id, so storing a
-- record again is a no-op. `cdr` is recomputed from all of a call's records, in the transaction
-- that adds any new one, with the rules of `contract::merge` (see the worker's store module): the
-- merge is a function of the set of records, so order and repetition cannot change a row.

CREATE TABLE cdr_record (
    msg_id      text        PRIMARY KEY,
    call_id     text        NOT NULL,
    -- contract RecordKind::as_str()
    kind        text        NOT NULL
        CHECK (kind IN ('answered_invite', 'failed_invite', 'cancelled_invite', 'bye', 'other')),
    -- contract merge::priority(): 0 answered INVITE, 1 failed INVITE, 2 BYE, 3 other
    priority    smallint    NOT NULL CHECK (priority BETWEEN 0 AND 3),
    event_time  timestamptz NOT NULL,
    method      text,
    from_tag    text,
    to_tag      text,
    sip_code    text,
    sip_reason  text,
    src_user    text,
    dst_user    text,
    extras      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    source_node text,
    stream_seq  bigint,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX cdr_record_call_id_idx ON cdr_record (call_id);

CREATE TABLE cdr (
    call_id      text        PRIMARY KEY,
    start_time   timestamptz,
    end_time     timestamptz,
    duration_ms  bigint,
    disposition  text        NOT NULL
        CHECK (disposition IN ('answered', 'cancelled', 'failed', 'unknown')),
    sip_code     text,
    sip_reason   text,
    from_tag     text,
    to_tag       text,
    src_user     text,
    dst_user     text,
    source_node  text,
    extras       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    record_count integer     NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX cdr_start_time_idx ON cdr (start_time);
CREATE INDEX cdr_end_time_idx ON cdr (end_time);
