fn main() -> std::process::ExitCode {
    cryptotl::cli::main()
}
