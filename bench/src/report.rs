//! Output: a readable table per scenario on standard output, one JSON line per result (on
//! standard output, and appended to `--json-out` when given), and the list of checks that
//! failed, which decides the exit code.

use crate::Fallible;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Where results go, and what went wrong.
pub struct Report {
    /// The `--json-out` file, appended to.
    json_out: Option<File>,
    /// Checks that failed ("lost 3 deliveries"), each naming its scenario.
    failures: Vec<String>,
    /// Added to every JSON line: the client's threads, the run's `--tag` and, when given,
    /// `--target-name` (which replaces the scenario's own `target`).
    context: serde_json::Map<String, Value>,
}

impl Report {
    /// A report that also appends JSON lines to `json_out`; every line carries the
    /// client's thread count and `tag` (such as the repeat number), and `target_name`
    /// replaces the `target` the scenario reports.
    pub fn new(
        json_out: Option<&Path>,
        client_threads: usize,
        tag: Option<&str>,
        target_name: Option<&str>,
    ) -> Fallible<Self> {
        let json_out = json_out
            .map(|path| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|err| format!("cannot open {}: {err}", path.display()))
            })
            .transpose()?;
        let mut context = serde_json::Map::new();
        context.insert("client_threads".into(), client_threads.into());
        if let Some(tag) = tag {
            context.insert("tag".into(), tag.into());
        }
        if let Some(name) = target_name {
            context.insert("target".into(), name.into());
        }
        Ok(Self {
            json_out,
            failures: Vec::new(),
            context,
        })
    }

    /// Prints a titled table with aligned columns.
    pub fn table(&self, title: &str, header: &[&str], rows: &[Vec<String>]) {
        let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
        for row in rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:>width$}"))
                .collect();
            println!("  {}", padded.join("  "));
        };
        println!("\n== {title}");
        line(header.to_vec());
        for row in rows {
            line(row.iter().map(String::as_str).collect());
        }
        println!();
    }

    /// Prints one result as a JSON line (and appends it to `--json-out`).
    pub fn emit(&mut self, record: &Value) -> Fallible<()> {
        let mut record = record.clone();
        if let Value::Object(fields) = &mut record {
            for (key, value) in &self.context {
                fields.insert(key.clone(), value.clone());
            }
        }
        let line = record.to_string();
        println!("{line}");
        if let Some(file) = &mut self.json_out {
            writeln!(file, "{line}").map_err(|err| format!("cannot write a JSON line: {err}"))?;
        }
        Ok(())
    }

    /// Records a failed check unless `ok`.
    pub fn check(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(failure());
        }
    }

    /// The checks that failed so far.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }
}

/// A number with a thousands separator, for tables.
pub fn count(value: f64) -> String {
    let rounded = value.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if rounded < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A value with one decimal, for tables.
pub fn dec(value: f64) -> String {
    format!("{value:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_get_separators() {
        assert_eq!(count(1234567.4), "1,234,567");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(-1000.0), "-1,000");
    }
}
