//! AFL harness of `lynx_worker::fuzz::request`.

fn main() {
    lynx_fuzz::run(lynx_worker::fuzz::request);
}
