//! Writes the CRD manifests from the Rust types into `crds/` and into the Helm chart's
//! `charts/nats-cdr/crds/` (`crdgen [DIR...]` to choose other directories).
//! With `--check`, writes nothing and fails when a committed file differs.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let mut check = false;
    let mut dirs = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [DIR...]");
                return Ok(());
            }
            other => dirs.push(PathBuf::from(other)),
        }
    }
    if dirs.is_empty() {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        dirs.push(crate_dir.to_path_buf());
        dirs.push(crate_dir.join("../charts/nats-cdr/crds"));
    }
    let mut stale = Vec::new();
    for dir in &dirs {
        for (file, crd) in nats_cdr_crds::all() {
            let path = dir.join(file);
            let text = nats_cdr_crds::render(&crd)?;
            if check {
                let committed = std::fs::read_to_string(&path).unwrap_or_default();
                if committed != text {
                    stale.push(path.display().to_string());
                }
            } else {
                std::fs::create_dir_all(dir)?;
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    if !stale.is_empty() {
        bail!(
            "out of date (run `cargo run -p nats-cdr-crds --bin crdgen`): {}",
            stale.join(", ")
        );
    }
    Ok(())
}
