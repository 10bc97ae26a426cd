//! Writes `crds/*.yaml` from the Rust types: `crdgen [DIR]` (default: this crate's directory).
//! With `--check`, writes nothing and fails when a committed file differs.

use std::path::PathBuf;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let mut check = false;
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [DIR]");
                return Ok(());
            }
            other => dir = PathBuf::from(other),
        }
    }
    let mut stale = Vec::new();
    for (file, crd) in nats_cdr_crds::all() {
        let path = dir.join(file);
        let text = nats_cdr_crds::render(&crd)?;
        if check {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed != text {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
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
