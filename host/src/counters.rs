//! The counters a worker keeps: one type, counted where things happen (the data plane,
//! the policy runner), carried whole in the worker's report, summed by the master over
//! live and exited workers, flattened into `/stats` and rendered by `/metrics`.
//!
//! Each counter's JSON name, metric name and help text sit next to its field, so a new
//! counter is one line here. It must never hold a gauge: every field only grows during
//! a worker's life, which is what lets the master's totals stay monotonic.

use serde::{Deserialize, Serialize};

/// A counter as `/metrics` exposes it.
#[derive(Debug)]
pub struct CounterMetric {
    /// The metric's name after `superpeer_` (all workers) or `superpeer_worker_` (each).
    pub name: &'static str,
    pub help: &'static str,
    pub get: fn(&Counters) -> u64,
}

macro_rules! counters {
    ($( #[doc = $help:literal] $field:ident => $metric:literal, )*) => {
        /// Counters of one worker, or summed over workers.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct Counters {
            $( #[doc = $help] #[serde(default)] pub $field: u64, )*
        }

        impl Counters {
            /// Every counter, in the order `/metrics` lists them.
            pub const METRICS: &[CounterMetric] = &[
                $( CounterMetric { name: $metric, help: $help.trim_ascii(), get: |c| c.$field }, )*
            ];
        }

        impl std::ops::Add for Counters {
            type Output = Counters;

            fn add(self, other: Counters) -> Counters {
                Counters { $( $field: self.$field + other.$field, )* }
            }
        }
    };
}

counters! {
    /// Bytes of segments sent to viewers.
    uploaded => "uploaded_bytes_total",
    /// Bytes fetched from the origin.
    downloaded => "downloaded_bytes_total",
    /// Segments sent to a viewer to their last byte.
    segments_served => "segments_served_total",
    /// Origin fetches that failed after their retries.
    fetch_errors => "fetch_errors_total",
    /// Policy calls that faulted (trap, deadline, memory limit, bad output).
    policy_traps => "policy_traps_total",
    /// Policies rolled back to their previous version after repeated faults.
    policy_rollbacks => "policy_rollbacks_total",
    /// Policy hot swaps that took effect.
    policy_swaps => "policy_swaps_total",
}

impl std::iter::Sum for Counters {
    fn sum<I: Iterator<Item = Counters>>(iter: I) -> Counters {
        iter.fold(Counters::default(), |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_a_metric_and_adds_up() {
        let one = Counters { uploaded: 1, policy_swaps: 2, ..Counters::default() };
        let sum: Counters = [one, one, Counters::default()].into_iter().sum();
        assert_eq!(sum, Counters { uploaded: 2, policy_swaps: 4, ..Counters::default() });
        let json = serde_json::to_value(sum).unwrap();
        assert_eq!(json.as_object().unwrap().len(), Counters::METRICS.len());
        assert_eq!(json["segmentsServed"], 0);
        let swaps = Counters::METRICS.iter().find(|m| m.name == "policy_swaps_total").unwrap();
        assert_eq!((swaps.get)(&sum), 4);
        assert_eq!(swaps.help, "Policy hot swaps that took effect.");
        // A report from a worker that lacks a newer counter still reads.
        assert_eq!(serde_json::from_str::<Counters>("{}").unwrap(), Counters::default());
    }
}
