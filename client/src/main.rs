//! `allium`: the Allium messenger on the command line (see [`allium_client::cli`]).

fn main() -> std::process::ExitCode {
    allium_client::cli::main()
}
