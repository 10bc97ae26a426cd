//! cdr-worker: in process against real servers ([`e2e`]), as a binary under failures
//! ([`chaos`]), and its SQL merge against the contract's ([`merge`]).

mod chaos;
mod e2e;
mod merge;
