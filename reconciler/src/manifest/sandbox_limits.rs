//! Sandbox durations and names: parsed and printed the same way by the manifest and by
//! `fort serve`.

/// Instance names are `NAME-XXXX`; a VM with a network has at most 10 characters (its TAP is
/// `fort-VM`, and Linux interface names have at most 15).
pub const MAX_NAME_WITH_NETWORK: usize = 5;

/// The default `ttl` and `max_ttl`.
pub const DEFAULT_TTL: u64 = 3600;
pub const DEFAULT_MAX_TTL: u64 = 24 * 3600;

/// A duration such as "20s", "15m", "1h 30m" (humantime), in whole seconds, at least 1.
pub fn parse_secs(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration such as \"30s\", \"15m\" or \"2h\" ({e})"))?;
    if d.as_secs() == 0 {
        return Err(format!("`{s}` is shorter than a second"));
    }
    Ok(d.as_secs())
}

/// A duration as a user writes it: "20s", "15m", "1h 30m".
pub fn human(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}
