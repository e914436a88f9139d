//! `scripts/setup` asks for libclang-dev exactly when bindgen could not find a libclang it can
//! use: file layouts of real Debian images, laid out under a fake root (`PGID_SETUP_ROOT`).

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// Whether `scripts/setup --check` asks for libclang-dev with `root` standing for `/`.
fn wants_libclang(root: &Path, libclang_path: Option<&str>) -> bool {
    let mut cmd = Command::new("bash");
    cmd.arg(common::repo_path("scripts/setup"))
        .arg("--check")
        .env("PGID_SETUP_ROOT", root)
        .env_remove("LIBCLANG_PATH");
    if let Some(p) = libclang_path {
        cmd.env("LIBCLANG_PATH", p);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("setup: "),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.contains("libclang-dev")
}

fn file(root: &Path, path: &str) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"").unwrap();
}

fn link(root: &Path, path: &str, target: &str) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    symlink(target, p).unwrap();
}

/// clang's headers as libclang-common-14-dev installs them.
fn headers(root: &Path) {
    file(root, "/usr/lib/llvm-14/lib/clang/14.0.6/include/stdbool.h");
}

/// libclang1-14: the library in the triplet directory, symlinks in llvm-14/lib.
fn libclang1(root: &Path) {
    file(root, "/usr/lib/x86_64-linux-gnu/libclang-14.so.14.0.6");
    link(
        root,
        "/usr/lib/x86_64-linux-gnu/libclang-14.so.1",
        "libclang-14.so.14.0.6",
    );
    link(
        root,
        "/usr/lib/llvm-14/lib/libclang.so.1",
        "../../x86_64-linux-gnu/libclang-14.so.14.0.6",
    );
}

/// libclang-cpp14: the C++ library only (what some images carry without libclang).
fn libclang_cpp(root: &Path) {
    file(root, "/usr/lib/llvm-14/lib/libclang-cpp.so.14");
    link(
        root,
        "/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14",
        "../llvm-14/lib/libclang-cpp.so.14",
    );
}

#[test]
fn libclang_dev_is_installed_unless_a_usable_libclang_is_there() {
    let empty = tempfile::tempdir().unwrap();
    assert!(wants_libclang(empty.path(), None), "nothing installed");

    let cpp_only = tempfile::tempdir().unwrap();
    libclang_cpp(cpp_only.path());
    headers(cpp_only.path());
    assert!(
        wants_libclang(cpp_only.path(), None),
        "libclang-cpp is not libclang"
    );

    let no_headers = tempfile::tempdir().unwrap();
    libclang1(no_headers.path());
    assert!(
        wants_libclang(no_headers.path(), None),
        "libclang without clang's headers"
    );

    let debian = tempfile::tempdir().unwrap();
    libclang_cpp(debian.path());
    libclang1(debian.path());
    headers(debian.path());
    assert!(
        !wants_libclang(debian.path(), None),
        "libclang1-14 and libclang-common-14-dev"
    );

    let custom = tempfile::tempdir().unwrap();
    file(custom.path(), "/opt/llvm/lib/libclang.so");
    file(custom.path(), "/opt/llvm/lib/clang/18/include/stdbool.h");
    assert!(
        wants_libclang(custom.path(), None),
        "not where bindgen looks"
    );
    assert!(
        !wants_libclang(custom.path(), Some("/opt/llvm/lib")),
        "LIBCLANG_PATH"
    );
}
