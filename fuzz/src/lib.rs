//! What every AFL harness in `src/bin/` does around its target.

/// Builds the targets' shared state, then hands AFL's inputs to `target`.
///
/// `afl::fuzz!` with the panic hook chosen at run time: a panic that escapes the target always
/// aborts (a crash for AFL); with LYNX_FUZZ_CAUGHT_PANICS=1 (`scripts/fuzz --caught-panics`) so
/// does one the worker catches by design, e.g. a panicking image decoder in `decode_image`.
pub fn run(target: fn(&[u8])) {
    if let Err(e) = lynx_worker::fuzz::init() {
        eprintln!("fuzz setup failed: {e}");
        std::process::exit(2);
    }
    let caught_panics = std::env::var_os("LYNX_FUZZ_CAUGHT_PANICS").is_some_and(|v| v == "1");
    afl::fuzz(caught_panics, |data: &[u8]| target(data));
}
