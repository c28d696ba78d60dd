//! The `d2dfs` binary: parse the command line, run the command, report errors in one line.

use std::process::ExitCode;

use clap::Parser;
use d2dfs::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.logs_early() {
        cli::init_logging(cli.global.verbose);
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` joins the context chain on one line: "logout failed: cannot reach …".
            eprintln!("d2dfs: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
