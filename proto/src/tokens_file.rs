//! The bearer tokens file that the worker and the router read (`--auth-tokens-file`).

/// The tokens of a file: one per line, surrounding spaces trimmed, blank lines and `#` comments
/// skipped.
pub fn parse(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}
