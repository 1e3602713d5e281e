//! Admission: the one check every new policy passes before it may run anywhere, whether
//! it comes from `.env` at start-up, `superpeer policy check` or `POST /policy`.
//!
//! It owns the order of the checks (size and format, compilation to native code once,
//! the world's types, a canary start, the size of the frame that carries it to
//! workers). It must never hand out a policy that failed any of them.

use super::engine::{PolicyEngine, PolicyMeta, Precompiled};
use super::error::PolicyError;
use super::runner::PolicyRunner;

/// A policy that passed admission: what the master hands its workers.
#[derive(Debug, Clone)]
pub struct AdmittedPolicy {
    pub meta: PolicyMeta,
    /// Where it came from (`embedded`, a file's path, `upload`), for the operator.
    pub source: String,
    pub precompiled: Precompiled,
}

impl PolicyEngine {
    /// Admits the component `wasm`: compiles it to native code once, loads that (which
    /// type-checks it against the world and asks it to describe itself), starts it on a
    /// scratch instance with a neutral seed, and checks that its native code fits the
    /// frame that carries it to a worker. Takes up to seconds of CPU: call it off the
    /// event loop.
    pub fn admit(
        &self,
        wasm: &[u8],
        source: impl Into<String>,
    ) -> Result<AdmittedPolicy, PolicyError> {
        let precompiled = self.precompile(wasm)?;
        // Native code travels to workers base64-encoded in one frame, with the start
        // message's other fields.
        let frame = precompiled.native.len().div_ceil(3) * 4 + (64 << 10);
        if frame > crate::ipc::MAX_FRAME {
            return Err(PolicyError::TooLarge { size: frame, max: crate::ipc::MAX_FRAME });
        }
        let compiled = self.load_precompiled(&precompiled)?;
        PolicyRunner::canary(self, &compiled)?;
        Ok(AdmittedPolicy { meta: compiled.meta().clone(), source: source.into(), precompiled })
    }

    /// [`PolicyEngine::admit`] for a component in a file.
    pub fn admit_file(&self, path: &std::path::Path) -> Result<AdmittedPolicy, PolicyError> {
        let wasm = std::fs::read(path)
            .map_err(|source| PolicyError::Read { path: path.display().to_string(), source })?;
        self.admit(&wasm, path.display().to_string())
    }
}
