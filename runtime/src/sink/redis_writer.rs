//! The version-guarded Redis writer.
