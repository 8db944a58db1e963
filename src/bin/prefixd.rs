//! The `prefixd` binary: see `prefixd --help`.
fn main() -> std::process::ExitCode {
    prefixd::cli::main()
}
