//! The `d2dfs` command line: argument definitions and the dispatch to each command.
//!
//! Each command builds the Tokio runtime it needs itself, so commands that must fork (a mount
//! going to the background) can do so before any thread exists.

mod account;
mod mount;
mod node;
mod status;
mod transfer;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::profile::Profile;

/// Matrix device-to-device file transfer (MSC2354) as a filesystem.
///
/// Files move directly between devices over WebRTC; Matrix rooms carry only the signalling.
#[derive(Debug, Parser)]
#[command(
    name = "d2dfs",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Account profile to use; two profiles are two independent logins on one machine
    #[arg(long, global = true, value_name = "NAME", env = "D2DFS_PROFILE")]
    pub profile: Option<String>,
    /// Keep this profile's session, stores and cache in DIR instead of the XDG directories
    #[arg(long, global = true, value_name = "DIR", env = "D2DFS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// More log output (-v: info, -vv: debug, -vvv: trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl GlobalArgs {
    pub fn profile(&self) -> anyhow::Result<Profile> {
        Ok(Profile::resolve(
            self.profile.as_deref(),
            self.data_dir.as_deref(),
        )?)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in with a password and store the session for later commands
    Login(account::LoginArgs),
    /// End the stored session on the homeserver and delete it locally
    Logout(account::LogoutArgs),
    /// Show the stored session: user id, device id, homeserver
    Whoami(account::WhoamiArgs),
    /// List the joined rooms: id, alias or name, encryption, join rule, members
    Rooms(account::RoomsArgs),
    /// Mount the rooms as a filesystem (returns once the mount answers; -f stays)
    Mount(mount::MountArgs),
    /// Unmount a d2dfs mount cleanly (live transfers are cancelled)
    Unmount(mount::UnmountArgs),
    /// Offer files to a room without a mount; exits once each was received
    Send(transfer::SendArgs),
    /// Accept offers in a room without a mount; files land when complete and checked
    Recv(transfer::RecvArgs),
    /// Live transfers of running mounts, with progress
    Status(status::StatusArgs),
    /// Print a shell completion script (e.g. `d2dfs completions bash > /etc/bash_completion.d/d2dfs`)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Cli {
    /// Whether logging is set up before the command runs (a mount going to the background
    /// sets it up after the fork, towards its log file).
    pub fn logs_early(&self) -> bool {
        !matches!(&self.command, Command::Mount(args) if mount::logs_itself(args))
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let profile = cli.global.profile()?;
    match cli.command {
        Command::Login(args) => account::login(&profile, args),
        Command::Logout(args) => account::logout(&profile, args),
        Command::Whoami(args) => account::whoami(&profile, args),
        Command::Rooms(args) => account::rooms(&profile, args),
        Command::Mount(args) => mount::mount(&profile, args, cli.global.verbose),
        Command::Unmount(args) => mount::unmount(args),
        Command::Send(args) => transfer::send(&profile, args),
        Command::Recv(args) => transfer::recv(&profile, args),
        Command::Status(args) => status::status(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "d2dfs", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Installs the tracing subscriber: warnings by default, more with `-v`, `RUST_LOG` wins.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        // matrix-sdk logs every failed request at ERROR; d2dfs reports failures itself.
        0 => "warn,matrix_sdk=off,matrix_sdk_base=off,matrix_sdk_crypto=off,matrix_sdk_common=off",
        1 => "warn,d2dfs=info",
        2 => "info,d2dfs=debug",
        _ => "debug,d2dfs=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A multi-threaded runtime for one command.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
