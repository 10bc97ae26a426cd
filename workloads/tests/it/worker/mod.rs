//! cdr-worker: in process against real servers ([`e2e`]), as a binary under failures
//! ([`chaos`]), its SQL merge against the contract's ([`merge`]), and rating with balance debit
//! ([`rating`]).

mod chaos;
mod e2e;
mod merge;
mod rating;
