//! cdr-worker: a durable pull consumer that writes CDRs into PostgreSQL and acks after commit.
