//! Finding the binaries the sandbox starts.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Finds a server binary (`redis-server`, `redis-cli`, `nats-server`, ...) in `PATH` or the usual
/// Debian places; a missing one is an error naming its package.
pub fn server_bin(name: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Missing {
            name: name.into(),
            package: package_of(name).into(),
        })
}

/// The Debian package that installs `name`.
fn package_of(name: &str) -> &str {
    match name {
        "redis-server" | "redis-cli" => "redis-server redis-tools",
        other => other,
    }
}

/// The `herald` binary: `explicit` when given, else `HERALD_BIN`, else the one cargo built beside
/// the running executable (`target/<profile>/herald`, also from a test in `target/<profile>/deps`).
pub fn herald_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("HERALD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(Error::io("own executable"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let bin = dir.join("herald");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(Error::NoHerald(bin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_server_names_its_package() {
        let e = server_bin("redis-cli-that-does-not-exist").expect_err("missing");
        assert!(
            e.to_string()
                .contains("apt-get install redis-cli-that-does-not-exist")
        );
        assert_eq!(package_of("redis-cli"), "redis-server redis-tools");
    }

    #[test]
    fn an_explicit_herald_wins() {
        let p = Path::new("/opt/h/herald");
        assert_eq!(herald_bin(Some(p)).expect("explicit"), p);
    }
}
