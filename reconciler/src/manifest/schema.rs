//! The JSON Schema of `fort.toml`, generated from the serde types in `raw.rs` (checked against
//! `schema/fort.schema.json` by a test).

use super::raw::RawFile;

pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(RawFile);
    serde_json::to_value(schema).unwrap_or(serde_json::Value::Null)
}

/// Pretty JSON with a trailing newline: exactly the committed `schema/fort.schema.json`.
pub fn json_schema_string() -> String {
    let mut s = serde_json::to_string_pretty(&json_schema()).unwrap_or_default();
    s.push('\n');
    s
}
