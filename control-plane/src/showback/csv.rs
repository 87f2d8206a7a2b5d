//! CSV as RFC 4180 writes it: comma-separated, CRLF line ends, a field
//! quoted when it holds a comma, quote or line break, quotes doubled.
//!
//! Owners, keys and cost centers are text that people and identity
//! providers choose, and these files are opened in spreadsheets: a field
//! that would start a formula (`=`, `+`, `-`, `@`, tab, CR) gets a leading
//! `'`, OWASP's advice against CSV injection. Numbers never start so.

/// One record, line end included.
pub fn record<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = fields
        .iter()
        .map(|f| field(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

fn field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_they_must_be() {
        for (fields, want) in [
            (vec!["a", "1", ""], "a,1,\r\n"),
            (vec!["Research, Inc."], "\"Research, Inc.\"\r\n"),
            (vec!["say \"hi\""], "\"say \"\"hi\"\"\"\r\n"),
            (vec!["two\nlines", "x"], "\"two\nlines\",x\r\n"),
            (vec!["=HYPERLINK(\"x\")"], "\"'=HYPERLINK(\"\"x\"\")\"\r\n"),
            (vec!["@sum", "+1", "-1", "a=b"], "'@sum,'+1,'-1,a=b\r\n"),
            (vec!["0.000001"], "0.000001\r\n"),
        ] {
            assert_eq!(record(&fields), want, "{fields:?}");
        }
    }
}
