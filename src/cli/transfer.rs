//! `send` and `recv`: transfers without a mount, with progress bars.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::broadcast;

use super::node::{Node, TrustArgs, parse_duration};
use crate::fs::names;
use crate::profile::Profile;
use crate::transfer::engine::{EngineConfig, TransferSnapshot};
use crate::transfer::lifecycle::{Phase, Role};

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Room id (!id:server) or alias (#name:server)
    #[arg(value_name = "ROOM")]
    room: String,
    /// Files to offer
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// Keep offering each file to further devices until the offers expire or Ctrl-C
    #[arg(long)]
    keep: bool,
    /// How long each offer stays open (e.g. 10m, 2h)
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = parse_duration)]
    lifetime: Duration,
    #[command(flatten)]
    trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct RecvArgs {
    /// Room id (!id:server) or alias (#name:server)
    #[arg(value_name = "ROOM")]
    room: String,
    /// Only these offers (transfer ids) [default: every live offer, or the next one]
    #[arg(value_name = "TRANSFER_ID")]
    transfer_ids: Vec<String>,
    /// Directory the files land in
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Only offers from this user
    #[arg(long, value_name = "USER")]
    from: Option<String>,
    /// Give up waiting for an offer after this long (e.g. 30s, 5m) [default: wait forever]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Keep accepting new offers until Ctrl-C
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    trust: TrustArgs,
}

const FIRST_SYNC_LIMIT: Duration = Duration::from_secs(60);

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:.bold} {bar:30.cyan/blue} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// Progress bars that follow transfers' snapshots.
struct Bars {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::new();
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Self {
            multi,
            bars: HashMap::new(),
        }
    }

    fn add(&mut self, transfer_id: &str, label: &str, size: u64) {
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(bar_style());
        bar.set_prefix(label.to_owned());
        bar.set_message("offered");
        self.bars.insert(transfer_id.to_owned(), bar);
    }

    fn update(&self, snapshot: &TransferSnapshot) {
        if let Some(bar) = self.bars.get(&snapshot.transfer_id) {
            bar.set_position(snapshot.bytes_moved.min(snapshot.size));
            bar.set_message(snapshot.phase.to_string());
            if snapshot.phase.is_final() {
                bar.finish();
            }
        }
    }

    fn println(&self, line: String) {
        let _ = self.multi.println(line);
    }
}

pub fn send(profile: &Profile, args: SendArgs) -> anyhow::Result<()> {
    for file in &args.files {
        let metadata =
            std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
        if !metadata.is_file() {
            bail!("{} is not a regular file", file.display());
        }
    }
    super::runtime()?.block_on(async {
        let node = Node::start(profile, args.trust.engine_config(args.lifetime)).await?;
        let result = send_all(&node, &args).await;
        node.engine.shutdown().await;
        result
    })
}

async fn send_all(node: &Node, args: &SendArgs) -> anyhow::Result<()> {
    if !node.synced(FIRST_SYNC_LIMIT).await {
        bail!("the homeserver did not answer");
    }
    let room_id = node.resolve_room(&args.room).await?;
    let mut updates = node.engine.subscribe();
    let mut bars = Bars::new();
    // transfer id -> the file it offers
    let mut pending: HashMap<String, PathBuf> = HashMap::new();
    for file in &args.files {
        let absolute = std::path::absolute(file)?;
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no UTF-8 file name", file.display()))?;
        let transfer_id = node.engine.offer_file(&room_id, &absolute, name).await?;
        bars.add(&transfer_id, name, std::fs::metadata(&absolute)?.len());
        pending.insert(transfer_id, absolute);
    }
    let mut failures = 0;
    let deadline = tokio::time::Instant::now() + args.lifetime;
    while !pending.is_empty() {
        let snapshot = tokio::select! {
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = tokio::time::sleep_until(deadline) => break,
            update = updates.recv() => match update {
                Ok(snapshot) => snapshot,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => bail!("the engine stopped"),
            },
        };
        if snapshot.role != Role::Sending || !pending.contains_key(&snapshot.transfer_id) {
            continue;
        }
        bars.update(&snapshot);
        if !snapshot.phase.is_final() {
            continue;
        }
        let Some(file) = pending.remove(&snapshot.transfer_id) else {
            continue;
        };
        let who = snapshot.peer.clone().unwrap_or_else(|| "nobody".to_owned());
        match snapshot.phase {
            Phase::Complete => {
                bars.println(format!("{}: received by {who}", file.display()));
                if args.keep {
                    let again = node.engine.reoffer(&snapshot.transfer_id).await?;
                    bars.add(&again, &snapshot.filename, snapshot.size);
                    pending.insert(again, file);
                }
            }
            Phase::Expired if args.keep => {}
            phase => {
                failures += 1;
                let reason = snapshot.reason.unwrap_or_else(|| phase.to_string());
                bars.println(format!("{}: not received: {reason}", file.display()));
            }
        }
    }
    if failures > 0 {
        bail!("{failures} file(s) were not received");
    }
    if !pending.is_empty() && !args.keep {
        bail!("{} offer(s) expired before anyone took them", pending.len());
    }
    Ok(())
}

pub fn recv(profile: &Profile, args: RecvArgs) -> anyhow::Result<()> {
    if !args.out.is_dir() {
        bail!("{} is not a directory", args.out.display());
    }
    super::runtime()?.block_on(async {
        let node = Node::start(
            profile,
            args.trust.engine_config(EngineConfig::default().lifetime),
        )
        .await?;
        let result = recv_all(&node, &args).await;
        node.engine.shutdown().await;
        result
    })
}

/// Whether `snapshot` is an offer `recv` should take.
fn wanted(snapshot: &TransferSnapshot, room_id: &str, args: &RecvArgs) -> bool {
    snapshot.role == Role::Receiving
        && snapshot.phase == Phase::Offered
        && snapshot.room_id == room_id
        && args
            .from
            .as_deref()
            .is_none_or(|from| snapshot.sender == from)
        && (args.transfer_ids.is_empty() || args.transfer_ids.contains(&snapshot.transfer_id))
}

/// A name in `dir` for `snapshot`'s file that is not taken yet.
fn destination(dir: &Path, snapshot: &TransferSnapshot) -> PathBuf {
    let name = names::unique(&snapshot.filename, &snapshot.transfer_id, |candidate| {
        dir.join(candidate).exists()
    });
    dir.join(name)
}

async fn recv_all(node: &Node, args: &RecvArgs) -> anyhow::Result<()> {
    let mut updates = node.engine.subscribe();
    if !node.synced(FIRST_SYNC_LIMIT).await {
        bail!("the homeserver did not answer");
    }
    let room_id = node.resolve_room(&args.room).await?.to_string();
    let mut bars = Bars::new();
    // transfer id -> where it lands
    let mut taking: HashMap<String, PathBuf> = HashMap::new();
    let mut done = 0usize;
    let mut failures = 0usize;
    let timeout = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let accept =
        |snapshot: &TransferSnapshot, taking: &mut HashMap<String, PathBuf>, bars: &mut Bars| {
            let dest = destination(&args.out, snapshot);
            bars.add(&snapshot.transfer_id, &snapshot.filename, snapshot.size);
            taking.insert(snapshot.transfer_id.clone(), dest);
        };
    for snapshot in node.engine.transfers() {
        if wanted(&snapshot, &room_id, args) {
            accept(&snapshot, &mut taking, &mut bars);
        }
    }
    let mut started: std::collections::HashSet<String> = Default::default();
    loop {
        for (transfer_id, dest) in &taking {
            if started.insert(transfer_id.clone()) {
                node.engine
                    .accept_to_file(transfer_id, dest)
                    .await
                    .with_context(|| format!("cannot accept {transfer_id}"))?;
            }
        }
        let finished = done + failures;
        let named_done = args.transfer_ids.is_empty() || finished >= args.transfer_ids.len();
        if !args.follow && taking.is_empty() && finished > 0 && named_done {
            break;
        }
        let snapshot = tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                if args.follow && taking.is_empty() { break; }
                bail!("interrupted");
            }
            _ = async {
                match timeout {
                    Some(at) if done + failures == 0 && taking.is_empty() => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            } => bail!("no offer arrived in time"),
            update = updates.recv() => match update {
                Ok(snapshot) => snapshot,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => bail!("the engine stopped"),
            },
        };
        if let Some(dest) = taking.get(&snapshot.transfer_id).cloned() {
            bars.update(&snapshot);
            if snapshot.phase.is_final() {
                taking.remove(&snapshot.transfer_id);
                if snapshot.phase == Phase::Complete {
                    done += 1;
                    bars.println(format!("{}: complete", dest.display()));
                } else {
                    failures += 1;
                    let reason = snapshot
                        .reason
                        .unwrap_or_else(|| snapshot.phase.to_string());
                    bars.println(format!("{}: failed: {reason}", snapshot.filename));
                }
            }
        } else if !started.contains(&snapshot.transfer_id)
            && wanted(&snapshot, &room_id, args)
            // Without --follow or named ids, `recv` takes what is live, or else the next one.
            && (args.follow
                || !args.transfer_ids.is_empty()
                || (taking.is_empty() && done + failures == 0))
        {
            accept(&snapshot, &mut taking, &mut bars);
        }
    }
    if failures > 0 {
        bail!("{failures} file(s) failed");
    }
    Ok(())
}
