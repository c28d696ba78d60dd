//! `login`, `logout`, `whoami`, `rooms`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use crate::profile::Profile;
use crate::signalling::rooms;
use crate::signalling::session::{self, LoginRequest, LogoutOutcome};

/// Environment variable that carries the password for scripts.
const PASSWORD_ENV: &str = "D2DFS_PASSWORD";

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Matrix user id (@name:server); prompted for when omitted. A bare name needs --homeserver
    #[arg(value_name = "USER")]
    user: Option<String>,
    /// Homeserver URL; discovered from the user id's server (.well-known) when omitted
    #[arg(long, value_name = "URL")]
    homeserver: Option<String>,
    /// Read the password from the first line of FILE ("-" for standard input).
    /// Without it: $D2DFS_PASSWORD, else a prompt on the terminal
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Name of this device in the account's device list [default: "d2dfs on HOSTNAME"]
    #[arg(long, value_name = "NAME")]
    device_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Delete the local session and stores even if the homeserver cannot be told
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct WhoamiArgs {
    /// Print the stored session without asking the homeserver whether it is still valid
    #[arg(long)]
    offline: bool,
}

#[derive(Debug, Args)]
pub struct RoomsArgs {
    /// Print JSON (one array of objects) instead of a table
    #[arg(long)]
    json: bool,
}

pub fn login(profile: &Profile, args: LoginArgs) -> anyhow::Result<()> {
    // Not while a mount (or send/recv) of this profile uses the device.
    let _lock = profile.lock()?;
    let user = match args.user {
        Some(user) => user,
        None => prompt_line("Matrix user id (@name:server): ")?,
    };
    let password = read_password(args.password_file.as_deref(), &user)?;
    let device_name = args.device_name.unwrap_or_else(default_device_name);
    let request = LoginRequest {
        user: &user,
        homeserver: args.homeserver.as_deref(),
        password: &password,
        device_name: &device_name,
    };
    // The client must be dropped inside the runtime: its SQLite pool closes on a Tokio task.
    super::runtime()?.block_on(async {
        let account = session::login(profile, &request).await?;
        println!(
            "Logged in as {} (device {}) on {}",
            account.user_id(),
            account.device_id(),
            account.homeserver()
        );
        Ok(())
    })
}

pub fn logout(profile: &Profile, args: LogoutArgs) -> anyhow::Result<()> {
    let _lock = profile.has_session().then(|| profile.lock()).transpose()?;
    let result = super::runtime()?.block_on(session::logout(profile));
    match result {
        Ok(LogoutOutcome::LoggedOut) => println!("Logged out; local session and keys deleted"),
        Ok(LogoutOutcome::AlreadyRevoked) => println!(
            "The homeserver had already ended this session; local session and keys deleted"
        ),
        Err(e) if args.force => {
            profile.forget()?;
            println!("Could not tell the homeserver ({e}); local session and keys deleted");
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context("logout failed (--force deletes the local session anyway)"));
        }
    }
    Ok(())
}

pub fn whoami(profile: &Profile, args: WhoamiArgs) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        let account = session::restore(profile).await?;
        if !args.offline {
            account
                .client
                .whoami()
                .await
                .map_err(|e| account.error(&matrix_sdk::Error::Http(Box::new(e))))?;
        }
        let key = account.client.encryption().ed25519_key().await;
        println!("user:       {}", account.user_id());
        println!("device:     {}", account.device_id());
        println!("homeserver: {}", account.homeserver());
        println!(
            "device key: {}",
            key.as_deref().unwrap_or("(not available)")
        );
        println!(
            "profile:    {} ({})",
            profile.name(),
            profile.data_dir().display()
        );
        Ok(())
    })
}

pub fn rooms(profile: &Profile, args: RoomsArgs) -> anyhow::Result<()> {
    let rooms = super::runtime()?.block_on(async {
        let account = session::restore(profile).await?;
        rooms::sync_now(&account.client)
            .await
            .map_err(|e| account.error(&e))?;
        anyhow::Ok(rooms::joined_rooms(&account.client).await)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rooms)?);
        return Ok(());
    }
    if rooms.is_empty() {
        println!("No joined rooms.");
        return Ok(());
    }
    let id_width = rooms
        .iter()
        .map(|r| r.room_id.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let label_width = rooms
        .iter()
        .map(|r| r.label().unwrap_or("-").chars().count())
        .max()
        .unwrap_or(0)
        .clamp(4, 40);
    println!(
        "{:id_width$}  {:label_width$}  {:9}  {:10}  MEMBERS",
        "ROOM ID", "NAME", "ENCRYPTED", "JOIN RULE"
    );
    for room in &rooms {
        let label: String = room.label().unwrap_or("-").chars().take(40).collect();
        println!(
            "{:id_width$}  {:label_width$}  {:9}  {:10}  {}",
            room.room_id,
            label,
            if room.encrypted { "yes" } else { "no" },
            room.join_rule,
            room.members
        );
    }
    Ok(())
}

/// Finds the password: `--password-file`, then `$D2DFS_PASSWORD`, then a terminal prompt.
fn read_password(file: Option<&std::path::Path>, user: &str) -> anyhow::Result<String> {
    if let Some(path) = file {
        let text = if path.as_os_str() == "-" {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line
        } else {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the password file {}", path.display()))?
        };
        let password = text.lines().next().unwrap_or("").to_owned();
        if password.is_empty() {
            bail!("the password file {} is empty", path.display());
        }
        return Ok(password);
    }
    if let Ok(password) = std::env::var(PASSWORD_ENV)
        && !password.is_empty()
    {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: use --password-file FILE or set {PASSWORD_ENV} when not on a terminal");
    }
    let password = rpassword::prompt_password(format!("Password for {user}: "))?;
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

fn prompt_line(prompt: &str) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("no user id given: pass it as `d2dfs login @name:server`");
    }
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let line = line.trim().to_owned();
    if line.is_empty() {
        bail!("no user id given");
    }
    Ok(line)
}

fn default_device_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        "d2dfs".to_owned()
    } else {
        format!("d2dfs on {host}")
    }
}
