//! `lynx-operator` entry point.

fn main() {
    eprintln!("lynx-operator: the controller is not implemented in this release");
    std::process::exit(2);
}
