//! The committed JSON Schema must be what the Rust types generate. Regenerate with
//! `FORT_UPDATE_SCHEMA=1 cargo test --test schema`.

#![allow(clippy::unwrap_used)]

#[test]
fn committed_schema_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/fort.schema.json");
    let generated = fort::manifest::json_schema_string();
    if std::env::var_os("FORT_UPDATE_SCHEMA").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "schema/fort.schema.json is stale: run FORT_UPDATE_SCHEMA=1 cargo test --test schema"
    );
}

#[test]
fn fort_schema_prints_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fort"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        fort::manifest::json_schema_string()
    );
}
