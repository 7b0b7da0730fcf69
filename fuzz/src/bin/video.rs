//! AFL harness of `lynx_worker::fuzz::video`.

fn main() {
    lynx_fuzz::run(lynx_worker::fuzz::video);
}
