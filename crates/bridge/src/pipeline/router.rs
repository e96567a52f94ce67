//! Which Logs Ingestion stream an event goes to, by its Falcon `eventType`.

use std::collections::HashMap;

/// Maps `eventType` (case-insensitively: Falcon spells `EppDetectionSummaryEvent` both ways)
/// to a stream, with a default for everything else.
#[derive(Debug, Clone)]
pub struct StreamRouter {
    default: String,
    by_type: HashMap<String, String>,
}

impl StreamRouter {
    /// Builds a router from `(eventType, stream)` pairs.
    pub fn new<'a>(default: &str, routes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            default: default.to_owned(),
            by_type: routes
                .into_iter()
                .map(|(event_type, stream)| (event_type.to_ascii_lowercase(), stream.to_owned()))
                .collect(),
        }
    }

    /// The stream for `event_type`.
    pub fn route(&self, event_type: &str) -> &str {
        // Allocation-free fast path for the common exact-lowercase miss is not worth it:
        // routing costs far less than encoding the record.
        self.by_type
            .get(&event_type.to_ascii_lowercase())
            .map_or(self.default.as_str(), String::as_str)
    }

    /// Every stream this router can return.
    pub fn streams(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.by_type.values().map(String::as_str).collect();
        all.push(&self.default);
        all.sort_unstable();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_case_insensitively_with_a_default() {
        let router = StreamRouter::new(
            "Custom-FalconEvents",
            [("EppDetectionSummaryEvent", "Custom-FalconDetections")],
        );
        assert_eq!(
            router.route("EppDetectionSummaryEvent"),
            "Custom-FalconDetections"
        );
        assert_eq!(
            router.route("EPPDetectionSummaryEvent"),
            "Custom-FalconDetections"
        );
        assert_eq!(
            router.route("AuthActivityAuditEvent"),
            "Custom-FalconEvents"
        );
        assert_eq!(
            router.streams(),
            vec!["Custom-FalconDetections", "Custom-FalconEvents"]
        );
    }
}
