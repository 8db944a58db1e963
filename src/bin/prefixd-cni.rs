//! The `prefixd-cni` CNI IPAM plugin binary.
fn main() -> std::process::ExitCode {
    prefixd::cni::main()
}
