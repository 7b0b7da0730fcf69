//! AFL harness of `lynx_worker::fuzz::video`.

fn main() {
    if let Err(e) = lynx_worker::fuzz::init() {
        eprintln!("fuzz setup failed: {e}");
        std::process::exit(2);
    }
    // `afl::fuzz!` with the panic hook chosen at run time. A panic that escapes the target always
    // aborts (a crash for AFL); with LYNX_FUZZ_CAUGHT_PANICS=1 (`scripts/fuzz --caught-panics`)
    // so does one the worker catches by design, e.g. a panicking image decoder in `decode_image`.
    let caught_panics = std::env::var_os("LYNX_FUZZ_CAUGHT_PANICS").is_some_and(|v| v == "1");
    afl::fuzz(caught_panics, |data: &[u8]| {
        lynx_worker::fuzz::video(data);
    });
}
