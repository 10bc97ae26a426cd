//! The CDR data path: `kam-cdr-bridge` (Kamailio acc_json lines into NATS JetStream) and
//! `cdr-worker` (JetStream into PostgreSQL), and the wire contract both of them share.

pub mod backoff;
pub mod bridge;
pub mod cli;
pub mod contract;
pub mod nats_auth;
pub mod rng;
pub mod worker;
