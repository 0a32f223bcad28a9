//! `--set key=value`: one dotted key of the parsed TOML table replaced before the table is read.

use crate::error::{Error, Result};

/// Apply one `dotted.key=value` override to a parsed TOML table. The value is parsed as TOML
/// (`lower.hidden=128`, `name="x"`, `lower.activation=relu` — a bare word is taken as a string).
pub(super) fn apply(table: &mut toml::Table, ov: &str) -> Result<()> {
    let file = "<command line --set>";
    let (key, raw) = ov.split_once('=').ok_or_else(|| Error::Config {
        file: file.into(),
        key: ov.into(),
        message: "expected KEY=VALUE, e.g. lower.hidden=128".into(),
    })?;
    let key = key.trim();
    let raw = raw.trim();
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").ok_or_else(|| Error::Internal("override value lost".into()))?,
        // All digits and still not a TOML value: an integer past TOML's 64-bit range, not a word.
        Err(_) if !raw.is_empty() && raw.trim_start_matches(['-', '+']).chars().all(|c| c.is_ascii_digit() || c == '_') => {
            return Err(Error::Config { file: file.into(), key: key.trim().into(), message: format!("{raw} is out of range (TOML integers are signed 64-bit: {} to {})", i64::MIN, i64::MAX) });
        }
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::Config { file: file.into(), key: key.into(), message: "empty key segment".into() });
    }
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| Error::Config {
            file: file.into(),
            key: key.into(),
            message: format!("`{p}` is not a table"),
        })?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
