//! Human tables: columns as wide as their widest cell, no borders.

use serde_json::Value;

/// A cell of a JSON value: strings bare, null as `-`, the rest as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_owned(),
        other => other.to_string(),
    }
}

pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<width$}", width = widths[i]));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

pub fn print(headers: &[&str], rows: &[Vec<String>]) {
    println!("{}", render(headers, rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let t = render(
            &["id", "ready"],
            &[
                vec!["a".into(), "yes".into()],
                vec!["longer".into(), "no".into()],
            ],
        );
        assert_eq!(t, "ID      READY\na       yes\nlonger  no");
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&serde_json::json!(3)), "3");
    }
}
