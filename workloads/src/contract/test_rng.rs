//! The deterministic generator of the contract's property-style tests: the crate's one
//! [`Rng`](crate::rng::Rng), under the name these tests use.

pub(crate) use crate::rng::Rng as Lcg;
