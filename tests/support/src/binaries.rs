//! Finds the external binaries the servers need. Lookup order for a tool `name`:
//! 1. the environment variable given for it (e.g. `NATS_CDR_KUBE_APISERVER`);
//! 2. `$NATS_CDR_CACHE/bin/<name>` (default `~/.cache/nats-cdr/bin`), filled by `scripts/setup.sh`;
//! 3. the `PATH`.
//!
//! A missing binary is an error that says how to get it.

use std::path::{Path, PathBuf};

/// A binary that could not be found.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot find `{name}`: set {env_var} to its path, or run `bash scripts/setup.sh` to build it into {cache_bin} (looked in $PATH too)"
)]
pub struct MissingBinary {
    name: String,
    env_var: String,
    cache_bin: String,
}

/// The cache directory the setup script fills: `$NATS_CDR_CACHE` or `~/.cache/nats-cdr`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NATS_CDR_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache").join("nats-cdr")
}

/// Path of the tool `name` (`etcd`, `kube-apiserver`, `nats-server`, `nats`, `kubectl`, ...).
pub fn find(name: &str) -> Result<PathBuf, MissingBinary> {
    let env_var = format!("NATS_CDR_{}", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&env_var) {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
    }
    let cache_bin = cache_dir().join("bin");
    let cached = cache_bin.join(name);
    if is_executable(&cached) {
        return Ok(cached);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(MissingBinary {
        name: name.to_owned(),
        env_var,
        cache_bin: cache_bin.display().to_string(),
    })
}

/// Directory of PostgreSQL's server binaries (`initdb`, `postgres`, `pg_ctl`):
/// `$NATS_CDR_PG_BIN`, else Debian's `/usr/lib/postgresql/<version>/bin` (newest first).
pub fn postgres_bin_dir() -> Result<PathBuf, MissingBinary> {
    if let Some(dir) = std::env::var_os("NATS_CDR_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|dir| is_executable(&dir.join("postgres")) && is_executable(&dir.join("initdb")))
        .ok_or_else(|| MissingBinary {
            name: "postgres (PostgreSQL server)".into(),
            env_var: "NATS_CDR_PG_BIN".into(),
            cache_bin: "/usr/lib/postgresql/<version>/bin (apt-get install postgresql)".into(),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// kwok's Stage objects (how fake nodes and pods move through their lifecycle):
/// `$NATS_CDR_KWOK_STAGES`, else `<cache>/kwok/stages.yaml` written by `scripts/setup.sh`.
pub fn kwok_stages() -> Result<PathBuf, MissingBinary> {
    let path = std::env::var_os("NATS_CDR_KWOK_STAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("kwok").join("stages.yaml"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(MissingBinary {
            name: format!("kwok stages ({})", path.display()),
            env_var: "NATS_CDR_KWOK_STAGES".into(),
            cache_bin: cache_dir().join("kwok").display().to_string(),
        })
    }
}
