//! Log lines in the runtime's log, tagged with the plugin's name.

use crate::bindings::evercache::plugin::host;
use crate::bindings::evercache::plugin::types::LogLevel;

/// Logs at debug level.
pub fn debug(message: impl AsRef<str>) {
    host::log(LogLevel::Debug, message.as_ref());
}

/// Logs at info level.
pub fn info(message: impl AsRef<str>) {
    host::log(LogLevel::Info, message.as_ref());
}

/// Logs at warn level.
pub fn warn(message: impl AsRef<str>) {
    host::log(LogLevel::Warn, message.as_ref());
}

/// Logs at error level.
pub fn error(message: impl AsRef<str>) {
    host::log(LogLevel::Error, message.as_ref());
}
