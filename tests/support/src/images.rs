//! The container images built from this repository by `scripts/images.sh`: OCI archives, one per
//! image, that the real nodes import into their containerd (pods then find them without a
//! registry). `images.sh` also writes `images.txt`, one `<reference> <archive file>` per line.

use std::path::{Path, PathBuf};

use crate::repo_root;

/// Reference of the pause image every pod sandbox runs (the containerd sandbox image).
pub const PAUSE: &str = "localhost/nats-cdr/pause:v1.37.2";
/// Reference of the cluster DNS image.
pub const COREDNS: &str = "localhost/nats-cdr/coredns:v1.15.0";
/// Reference of the probe image of tests (a static busybox; call applets as `busybox <applet>`).
pub const BUSYBOX: &str = "localhost/nats-cdr/busybox:1.35";

/// The image archives are missing or unreadable.
#[derive(Debug, thiserror::Error)]
#[error(
    "no container image {what} in {dir}: run `bash scripts/images.sh` (scripts/test.sh does), or set NATS_CDR_IMAGES to the directory it wrote"
)]
pub struct MissingImage {
    what: String,
    dir: String,
}

/// An image archive and the reference it is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageArchive {
    pub reference: String,
    pub file: PathBuf,
}

/// Where `scripts/images.sh` writes: `$NATS_CDR_IMAGES`, else `<repo>/target/images`.
pub fn dir() -> PathBuf {
    std::env::var_os("NATS_CDR_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target").join("images"))
}

/// Every image of `images.txt`, checked to exist, and the pause and CoreDNS images among them.
pub fn all() -> Result<Vec<ImageArchive>, MissingImage> {
    let dir = dir();
    let missing = |what: &str| MissingImage {
        what: what.to_owned(),
        dir: dir.display().to_string(),
    };
    let index = std::fs::read_to_string(dir.join("images.txt"))
        .map_err(|_| missing("index (images.txt)"))?;
    let archives = parse_index(&index, &dir);
    for archive in &archives {
        if !archive.file.is_file() {
            return Err(missing(&archive.file.display().to_string()));
        }
    }
    for required in [PAUSE, COREDNS, BUSYBOX] {
        if !archives.iter().any(|a| a.reference == required) {
            return Err(missing(required));
        }
    }
    Ok(archives)
}

/// The reference of an image of this repository by its name (`nats-cdr-operator`,
/// `kam-cdr-bridge`, `cdr-worker`, `nats-server`), as `images.sh` tagged it.
pub fn reference(name: &str) -> Result<String, MissingImage> {
    let suffix = format!("/{name}:");
    all()?
        .into_iter()
        .map(|a| a.reference)
        .find(|r| r.contains(&suffix))
        .ok_or_else(|| MissingImage {
            what: name.to_owned(),
            dir: dir().display().to_string(),
        })
}

fn parse_index(text: &str, dir: &Path) -> Vec<ImageArchive> {
    text.lines()
        .filter_map(|line| {
            let (reference, file) = line.trim().split_once(' ')?;
            Some(ImageArchive {
                reference: reference.to_owned(),
                file: dir.join(file.trim()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_names_each_archive_by_its_reference() {
        let parsed = parse_index(
            "ghcr.io/nats-cdr/cdr-worker:0.1.0 cdr-worker.oci.tar\n\nbad-line\n",
            Path::new("/i"),
        );
        assert_eq!(
            parsed,
            vec![ImageArchive {
                reference: "ghcr.io/nats-cdr/cdr-worker:0.1.0".into(),
                file: PathBuf::from("/i/cdr-worker.oci.tar"),
            }]
        );
    }
}
