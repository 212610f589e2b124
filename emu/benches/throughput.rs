//! The emulator's throughput (written with the interpreter).
fn main() {}
