//! The `wif` binary: every component of wif behind one executable.

fn main() -> std::process::ExitCode {
    wif::main()
}
