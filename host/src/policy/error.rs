//! The policy layer's errors.

use std::time::Duration;

/// Why a policy could not be loaded, started or swapped in. The running policy is never
/// affected by any of these.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy is {size} bytes, more than the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error(
        "component does not implement a superpeer:policy world this host runs (0.2.0 or 0.1.0): {0}"
    )]
    WrongWorld(String),
    #[error("policy {policy} failed its start: {fault}")]
    Start { policy: String, fault: Fault },
    #[error("hot swap not done: the running policy faulted while saving its state ({0})")]
    SwapAborted(Fault),
    #[error("could not read policy file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("policy engine could not be set up: {0}")]
    Engine(String),
}

/// Something a running policy instance did wrong. The instance is discarded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
pub enum Fault {
    #[error("ran past its {0:?} deadline")]
    Deadline(Duration),
    #[error("tried to use more than its {0}-byte memory limit")]
    Memory(usize),
    #[error("panicked{}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    Panic(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned {count} commands in one call, more than the limit of {max}")]
    TooManyCommands { count: usize, max: usize },
    #[error("refused to start: {0}")]
    InitRefused(String),
    #[error("returned more than {0} bytes from one call")]
    TooMuchOutput(usize),
    /// Not the policy's doing: the host had no instance slot free. Does not count
    /// towards a rollback.
    #[error("host capacity: {0}")]
    Capacity(String),
}

impl Fault {
    /// A stable short name, for stats and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Deadline(_) => "deadline",
            Fault::Memory(_) => "memory",
            Fault::Panic(_) => "panic",
            Fault::Trap(_) => "trap",
            Fault::TooManyCommands { .. } => "too-many-commands",
            Fault::InitRefused(_) => "init-refused",
            Fault::TooMuchOutput(_) => "too-much-output",
            Fault::Capacity(_) => "capacity",
        }
    }
}
