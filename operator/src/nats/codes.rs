//! JetStream API error codes and refusal texts: the one place that knows how the server says
//! "not found" and "cannot change this in place".

/// JetStream API error code: stream not found.
pub(super) const STREAM_NOT_FOUND: u64 = 10059;
/// JetStream API error code: consumer not found.
pub(super) const CONSUMER_NOT_FOUND: u64 = 10014;

impl super::Error {
    /// Whether the server answered "stream not found".
    pub(crate) fn is_stream_not_found(&self) -> bool {
        matches!(self, Self::Api { code, .. } if *code == STREAM_NOT_FOUND)
    }
}

/// Whether a refused update means "this field cannot be changed in place". The server has no
/// dedicated code for it (it answers 10052, "invalid stream configuration", for most refusals),
/// so the text decides.
pub(crate) fn cannot_change_in_place(description: &str) -> bool {
    let d = description.to_ascii_lowercase();
    [
        // NATS prefixes its in-place refusals with this ("... can not cancel deny message deletes").
        "configuration update can not",
        "can not cancel",
        "can not change",
        "cannot change",
        "can not be changed",
        "can not be updated",
        "can not be modified",
        "cannot be changed",
        "not allowed to change",
        "can not be altered",
    ]
    .iter()
    .any(|p| d.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_update_refusals_are_recognised() {
        assert!(cannot_change_in_place(
            "stream configuration update can not cancel deny message deletes (code 500, error code 10052)"
        ));
        assert!(!cannot_change_in_place(
            "insufficient resources (code 503, error code 10023)"
        ));
    }
}
