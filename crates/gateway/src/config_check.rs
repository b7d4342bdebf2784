//! The error every section's `validate` returns: which option, and why its value cannot
//! be used. A leaf of its own, so that the sections can live with the components they
//! configure while `config` gathers them.

/// A well-typed option whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("option `{option}`: {reason}")]
pub struct InvalidOption {
    /// The dotted option name, e.g. `listener.path_prefix`.
    pub option: &'static str,
    /// Why the value cannot be used.
    pub reason: String,
}

impl InvalidOption {
    /// `option` is unusable because of `reason`.
    pub fn new(option: &'static str, reason: impl Into<String>) -> InvalidOption {
        InvalidOption {
            option,
            reason: reason.into(),
        }
    }
}
