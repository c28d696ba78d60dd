//! `status`: what a running mount is doing, read from the mount itself (its
//! `user.d2dfs.*` attributes), so it needs no connection to the mount's process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::fs::mounts;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A d2dfs mount point [default: every d2dfs mount]
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: Option<PathBuf>,
    /// Print the table once instead of live progress bars (the default off a terminal)
    #[arg(long)]
    once: bool,
}

/// One file of a mount, as its attributes tell.
#[derive(Debug, Clone)]
struct Row {
    key: PathBuf,
    room: String,
    name: String,
    state: String,
    size: u64,
    bytes: u64,
    sender: String,
    path: String,
    error: Option<String>,
}

/// An extended attribute of `path` (not following symlinks), as text.
pub fn xattr(path: &Path, name: &str) -> Option<String> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut buffer = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buffer.truncate(n as usize);
    String::from_utf8(buffer).ok()
}

fn collect(mount: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let Ok(rooms) = std::fs::read_dir(mount) else {
        return rows;
    };
    for room in rooms.flatten() {
        if !room.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(room.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            let get = |name: &str| xattr(&path, &format!("user.d2dfs.{name}"));
            let number = |name: &str| get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
            rows.push(Row {
                room: room.file_name().to_string_lossy().into_owned(),
                name: file.file_name().to_string_lossy().into_owned(),
                state: get("state").unwrap_or_else(|| "?".to_owned()),
                size: number("size"),
                bytes: number("bytes"),
                sender: get("sender").unwrap_or_default(),
                path: get("path").unwrap_or_default(),
                error: get("error"),
                key: path,
            });
        }
    }
    rows.sort_by(|a, b| (&a.room, &a.name).cmp(&(&b.room, &b.name)));
    rows
}

fn mounts_to_show(args: &StatusArgs) -> anyhow::Result<Vec<PathBuf>> {
    let all = mounts::d2dfs_mounts();
    match &args.mountpoint {
        Some(path) => {
            let path = std::path::absolute(path)?;
            if !mounts::is_d2dfs_mount(&path) {
                bail!("{} is not a d2dfs mount", path.display());
            }
            Ok(vec![path])
        }
        None if all.is_empty() => bail!("no d2dfs mount is running"),
        None => Ok(all),
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mounts = mounts_to_show(&args)?;
    let live = !args.once && std::io::IsTerminal::is_terminal(&std::io::stdout());
    if !live {
        for mount in &mounts {
            print_table(mount, &collect(mount));
        }
        return Ok(());
    }
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:.bold} {bar:30.cyan/blue} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
    )?
    .progress_chars("=> ");
    let mut shown: std::collections::HashMap<PathBuf, ProgressBar> = Default::default();
    loop {
        let rows: Vec<Row> = mounts.iter().flat_map(|m| collect(m)).collect();
        shown.retain(|key, bar| {
            let keep = rows.iter().any(|r| &r.key == key);
            if !keep {
                bar.finish_and_clear();
            }
            keep
        });
        for row in &rows {
            let bar = shown.entry(row.key.clone()).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(row.size));
                bar.set_style(style.clone());
                bar.set_prefix(format!("{}/{}", short(&row.room), row.name));
                bar
            });
            bar.set_length(row.size);
            bar.set_position(row.bytes.min(row.size));
            let mut message = row.state.clone();
            if !row.path.is_empty() {
                message.push_str(&format!(" ({})", row.path));
            }
            if let Some(error) = &row.error {
                message.push_str(&format!(": {error}"));
            }
            bar.set_message(message);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn short(room: &str) -> String {
    let cut: String = room.chars().take(24).collect();
    if cut.len() < room.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

fn print_table(mount: &Path, rows: &[Row]) {
    println!("{}", mount.display());
    if rows.is_empty() {
        println!("  no offers");
        return;
    }
    for row in rows {
        let percent = (row.bytes.min(row.size) * 100)
            .checked_div(row.size)
            .unwrap_or(100);
        let mut line = format!(
            "  {}/{}  {}  {}/{} bytes ({percent}%)",
            row.room, row.name, row.state, row.bytes, row.size
        );
        if !row.sender.is_empty() {
            line.push_str(&format!("  from {}", row.sender));
        }
        if !row.path.is_empty() {
            line.push_str(&format!("  {}", row.path));
        }
        if let Some(error) = &row.error {
            line.push_str(&format!("  error: {error}"));
        }
        println!("{line}");
    }
}
