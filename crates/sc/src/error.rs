//! The SC's one error type. Reports carry its message; the API maps the
//! variants to HTTP statuses.

#[derive(Debug, thiserror::Error)]
pub enum ScError {
    /// The desired state asks for something impossible (a bad id, a size
    /// smaller than the snapshot, a snapshot of an unknown volume).
    #[error("{0}")]
    Invalid(String),
    /// A file, a daemon, a download or an upload failed.
    #[error("{0}")]
    Io(String),
}

impl ScError {
    pub fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> ScError {
        ScError::Io(format!("{what}: {e}"))
    }
}
