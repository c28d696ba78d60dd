//! File names from the network made safe to show, and names from the user checked before
//! they go on the wire.
//!
//! An offered file name is whatever the peer put in the event. Shown in a directory it must
//! be one path component: no `/`, no NUL, not `.` or `..`, no control characters, at most
//! [`MAX_NAME`] bytes. Two offers with the same name get distinct names that do not depend
//! on arrival order: the later one is suffixed with a tag derived from its transfer id.

use sha2::{Digest, Sha256};

use crate::hex;

/// Longest name shown, in bytes (Linux `NAME_MAX` is 255; room is left for the tag).
pub const MAX_NAME: usize = 200;
/// Longest extension kept when a name is cut.
const MAX_EXTENSION: usize = 16;

/// The offered `name` as one safe path component.
pub fn sanitize(name: &str) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| match c {
            '/' | '\\' => '_',
            c if c.is_control() => '_',
            // Characters that render as nothing or reorder text (bidi overrides) would let a
            // name pose as another.
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => '_',
            c => c,
        })
        .collect();
    clean = clean.trim().to_owned();
    if clean.is_empty() {
        return "unnamed".to_owned();
    }
    if clean.chars().all(|c| c == '.') {
        // `.`, `..` and friends: keep them visible but harmless.
        clean = clean.replace('.', "_");
    }
    truncate(&clean, MAX_NAME)
}

/// `name` cut to at most `limit` bytes on a character boundary, keeping a short extension.
fn truncate(name: &str, limit: usize) -> String {
    if name.len() <= limit {
        return name.to_owned();
    }
    let (stem, extension) = split_extension(name);
    let extension = if extension.len() <= MAX_EXTENSION {
        extension
    } else {
        ""
    };
    let mut cut = limit - extension.len();
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{extension}", &stem[..cut])
}

/// `("report", ".pdf")`; names with no extension (or only a leading dot) keep all as stem.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 => name.split_at(dot),
        _ => (name, ""),
    }
}

/// The name to show for `transfer_id`'s offer of `name`, given the names `taken` in its
/// directory: the sanitised name, or when taken, the name tagged with the transfer id.
pub fn unique(name: &str, transfer_id: &str, taken: impl Fn(&str) -> bool) -> String {
    let clean = sanitize(name);
    if !taken(&clean) {
        return clean;
    }
    let digest = Sha256::digest(transfer_id.as_bytes());
    let tag = hex::encode(&digest[..4]);
    let (stem, extension) = split_extension(&clean);
    let mut candidate = format!("{stem} ({tag}){extension}");
    let mut n = 2;
    while taken(&candidate) {
        candidate = format!("{stem} ({tag}-{n}){extension}");
        n += 1;
    }
    candidate
}

/// Why a name given by the user (creating a file in a room directory) cannot be offered.
pub fn check_local(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("not a file name");
    }
    if name.len() > MAX_NAME {
        return Err("the name is too long to offer");
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        return Err("control characters cannot be offered");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_become_one_harmless_component() {
        assert_eq!(sanitize("../../x"), ".._.._x");
        assert_eq!(sanitize(".."), "__");
        assert_eq!(sanitize("."), "_");
        assert_eq!(sanitize("a/b\0c\nd"), "a_b_c_d");
        assert_eq!(sanitize(""), "unnamed");
        assert_eq!(sanitize("  "), "unnamed");
        assert_eq!(sanitize("evil\u{202E}fdp.exe"), "evil_fdp.exe");
        let long = format!("{}.tar.gz", "x".repeat(4096));
        let cut = sanitize(&long);
        assert!(cut.len() <= MAX_NAME && cut.ends_with(".gz"), "{cut}");
        let wide = "é".repeat(300);
        let cut = sanitize(&wide);
        assert!(cut.len() <= MAX_NAME && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn collisions_get_stable_distinct_names() {
        let taken = |n: &str| n == "report.pdf";
        let a = unique("report.pdf", "t1", taken);
        let b = unique("report.pdf", "t2", taken);
        assert_ne!(a, b);
        assert_eq!(
            a,
            unique("report.pdf", "t1", taken),
            "same transfer, same name"
        );
        assert!(a.starts_with("report (") && a.ends_with(").pdf"), "{a}");
        assert_eq!(unique("other.pdf", "t1", taken), "other.pdf");
    }

    #[test]
    fn local_names_are_checked() {
        assert!(check_local("ok.txt").is_ok());
        assert!(check_local("bad\nname").is_err());
        assert!(check_local(&"x".repeat(300)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_name_is_safe(name in ".{0,600}", id in "[a-z0-9]{1,8}") {
            let shown = unique(&name, &id, |n| n.len() % 2 == 0);
            proptest::prop_assert!(!shown.is_empty() && shown.len() <= 255);
            proptest::prop_assert!(!shown.contains('/') && !shown.contains('\0'));
            proptest::prop_assert!(shown != "." && shown != "..");
            proptest::prop_assert!(!shown.chars().any(char::is_control));
        }
    }
}
