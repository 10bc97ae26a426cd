//! The committed `crds/*.yaml` must be exactly what the Rust types generate.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

#[test]
fn committed_crd_yaml_matches_the_types() {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The manifests for `kubectl apply -f crds/`, and the copy the Helm chart installs.
    let dirs = [
        crate_dir.to_path_buf(),
        crate_dir.join("../charts/nats-cdr/crds"),
    ];
    let mut stale = Vec::new();
    for dir in &dirs {
        for (file, crd) in nats_cdr_crds::all() {
            let expected = nats_cdr_crds::render(&crd).expect("render");
            let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            if committed != expected {
                stale.push(dir.join(file).display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from the Rust types: run `cargo run -p nats-cdr-crds --bin crdgen` and commit"
    );
}

#[test]
fn every_kind_has_status_printer_columns_short_names_and_category() {
    for (file, crd) in nats_cdr_crds::all() {
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1", "{file}");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{file}: status subresource"
        );
        let columns = version
            .additional_printer_columns
            .as_deref()
            .unwrap_or_default();
        assert!(
            columns.iter().any(|c| c.name == "Ready"),
            "{file}: Ready column"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{file}: short names"
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["nats-cdr".to_owned()][..]),
            "{file}"
        );
        let schema = serde_json::to_string(&version.schema).expect("schema json");
        assert!(
            schema.contains("x-kubernetes-validations"),
            "{file}: has CEL rules"
        );
    }
}
