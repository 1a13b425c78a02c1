//! The `wif` binary: every component of wif behind one executable.

// musl's malloc serialises every allocation on one lock; the static build uses mimalloc.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    wif::main()
}
