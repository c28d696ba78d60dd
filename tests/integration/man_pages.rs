//! The man pages in `man/` are generated from the clap definitions; this test keeps them current.
//!
//! After changing the command line, regenerate with:
//! `D2DFS_BLESS=1 cargo test --test integration man_pages`

use std::path::Path;

use clap::CommandFactory;
use d2dfs::cli::Cli;

/// `(file name, roff text)` of every page.
fn render_pages() -> Vec<(String, Vec<u8>)> {
    let extra = std::fs::read(man_dir().join("d2dfs-extra.roff")).expect("man/d2dfs-extra.roff");
    let command = Cli::command();
    let mut pages = Vec::new();

    let man = clap_mangen::Man::new(command.clone());
    let mut main = Vec::new();
    man.render_title(&mut main).unwrap();
    man.render_name_section(&mut main).unwrap();
    man.render_synopsis_section(&mut main).unwrap();
    man.render_description_section(&mut main).unwrap();
    man.render_options_section(&mut main).unwrap();
    man.render_subcommands_section(&mut main).unwrap();
    main.extend_from_slice(&extra);
    man.render_version_section(&mut main).unwrap();
    pages.push(("d2dfs.1".to_owned(), main));

    for sub in command.get_subcommands() {
        let name = format!("d2dfs-{}", sub.get_name());
        let sub = sub.clone().name(&*Box::leak(name.clone().into_boxed_str()));
        let mut page = Vec::new();
        clap_mangen::Man::new(sub).render(&mut page).unwrap();
        pages.push((format!("{name}.1"), page));
    }
    pages
}

fn man_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/man"))
}

#[test]
fn man_pages_are_current() {
    let bless = std::env::var_os("D2DFS_BLESS").is_some();
    for (name, text) in render_pages() {
        let path = man_dir().join(&name);
        if bless {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == text,
            "man/{name} is stale: run `D2DFS_BLESS=1 cargo test --test integration man_pages`"
        );
    }
}
