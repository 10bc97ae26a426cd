//! The nats-cdr operator: controllers for `NatsCluster` (external mode), `JetStreamStream` and
//! `JetStreamConsumer`, a shared NATS connection pool, metrics, Events, and Lease-based leader
//! election. `main.rs` is a thin shell over [`Operator`].
//!
//! Layers, imports pointing down only:
//!
//! ```text
//! operator            leader loop + wiring: one generic spawn::<R>() per controller
//! controllers/        nats_cluster, jetstream/{stream, consumer}: build, observe, plan, execute, report
//! reconcile/          the frame: trait Reconciler, Context, Reason, backoff, status writes
//! status/  nats/      conditions, status patch, Events | connection pool, typed JetStream calls
//! k8s/                field manager, annotations, caches, Lease, child objects (resources)
//! telemetry/          metrics and their label enums
//! ```

mod controllers;
pub mod k8s;
mod nats;
mod operator;
mod reconcile;
mod settings;
mod status;
mod telemetry;

pub use k8s::lease::LeaseSettings;
pub use operator::{Error, Operator};
pub use settings::{Args, Settings};
pub use telemetry::{Kind, Metrics};
