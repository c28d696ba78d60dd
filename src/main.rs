//! The `d2dfs` binary: parse the command line, run the command, report errors in one line.

use std::process::ExitCode;

use clap::Parser;
use d2dfs::cli::{self, Cli};

fn main() -> ExitCode {
    one_malloc_arena();
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

/// glibc gives each thread that allocates its own arena, and an arena keeps what is freed
/// into it. Chunks, frames and packets are allocated on one thread and freed on another, so a
/// mount moving data held ~50 MiB more than it used: peak RSS during a 1 GiB read with a
/// 64 MiB cache went from 173 MiB to 121 MiB with one arena, at the same throughput
/// (contrib/bench/RESULTS.md). Set before any thread exists.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
