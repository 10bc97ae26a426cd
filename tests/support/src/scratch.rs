//! Temporary directories of servers. Each test process gets one run directory under
//! `$TMPDIR/nats-cdr-test/`; run directories of processes that are gone are removed when the next
//! one starts, so nothing piles up even when a test run is killed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static RUN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// This process's run directory (created on first use; stale ones are cleaned then).
pub fn run_dir() -> std::io::Result<&'static Path> {
    if let Some(dir) = RUN_DIR.get() {
        return Ok(dir);
    }
    let root = std::env::temp_dir().join("nats-cdr-test");
    std::fs::create_dir_all(&root)?;
    remove_stale(&root);
    let dir = root.join(format!("{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(RUN_DIR.get_or_init(|| dir))
}

/// A new empty directory inside the run directory, named after `label`.
pub fn new_dir(label: &str) -> std::io::Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{label}-"))
        .tempdir_in(run_dir()?)?
        .keep();
    Ok(dir)
}

fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
