//! AFL harness of `lynx_worker::fuzz::tokenizer_decode`.

fn main() {
    lynx_fuzz::run(lynx_worker::fuzz::tokenizer_decode);
}
