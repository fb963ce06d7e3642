//! Build metadata for `magistral_build_info`: the commit the binary was built from.
//!
//! `MAGISTRAL_BUILD_COMMIT` wins when set (the container build has no `.git`: pass it as a
//! build argument); otherwise `git rev-parse --short HEAD`; otherwise `unknown` (a source
//! tarball). Cargo reruns this only when HEAD or the branch it points at moves, so ordinary
//! rebuilds do not recompile the crate for it.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MAGISTRAL_BUILD_COMMIT");
    let commit = std::env::var("MAGISTRAL_BUILD_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .or_else(|| {
            watch_git();
            git(&["rev-parse", "--short", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=MAGISTRAL_COMMIT={commit}");
}

/// Output of a git command, when git is there and this is a checkout.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// Rerun when HEAD moves: the HEAD file (a branch switch), the branch's ref file (a commit) and
/// packed-refs. Paths come from git itself, so worktrees (where `.git` is a file) work too.
fn watch_git() {
    let mut files = vec!["HEAD".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        files.push(branch);
    }
    files.push("packed-refs".to_owned());
    for file in files {
        if let Some(path) = git(&["rev-parse", "--git-path", &file])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
