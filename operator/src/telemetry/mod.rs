//! Telemetry: the Prometheus metrics of the operator and the label enums they use. The bottom
//! layer: it imports nothing else of this crate, so every other module may count into it.

mod metrics;

pub(crate) use metrics::Op;
pub use metrics::{Kind, Metrics};

/// The message of an error followed by those of its sources, `: `-separated; a source whose text
/// its parent already shows is not repeated.
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn sources_are_told_once() {
        let io = || std::io::Error::other("refused");
        assert_eq!(super::describe(&Outer(io())), "outer: refused");
        assert_eq!(super::describe(&Repeats(io())), "wrapped: refused");
    }
}
