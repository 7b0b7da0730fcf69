//! AFL harness of `lynx_worker::fuzz::image`.

fn main() {
    lynx_fuzz::run(lynx_worker::fuzz::image);
}
