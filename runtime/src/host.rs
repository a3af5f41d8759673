//! This machine's name, for naming a consumer or a lease holder to operators.

/// `$HOSTNAME`, else `/etc/hostname`; `None` when neither names one.
pub fn name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}
