//! Reads the Prometheus text exposition format, as served by Envoy's
//! `/stats/prometheus`: the control plane's showback reads the filter's
//! counters with it, and the tests assert on single series.

/// One series line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// True when every pair in `wanted` is among this series' labels.
    pub fn has_labels(&self, wanted: &[(&str, &str)]) -> bool {
        wanted.iter().all(|(key, value)| {
            self.labels
                .iter()
                .any(|(have_key, have_value)| have_key == key && have_value == value)
        })
    }
}

/// Every sample in `text`; comment lines and lines that do not parse (there
/// should be none) are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

/// The value of the series named exactly `name` whose labels include all of
/// `labels`. When several series match (the labels given do not pin one down)
/// their values are summed, so `metric("x", &[])` totals a family.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    parse(text)
        .into_iter()
        .filter(|sample| sample.name == name && sample.has_labels(labels))
        .map(|sample| sample.value)
        .reduce(|a, b| a + b)
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `key="value",...}` and returns the labels and the text after `}`.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after_key.char_indices();
        let end = loop {
            match chars.next()? {
                (index, '"') => break index,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, other) => value.push(other),
            }
        };
        labels.push((key.trim().to_owned(), value));
        text = &after_key[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
# TYPE envoy_maas_requests counter
envoy_maas_requests{model="m1",outcome="allowed"} 3
envoy_maas_requests{model="m2",outcome="allowed"} 4
envoy_maas_requests{model="m1",outcome="denied",reason="a \"quoted\", odd\\one"} 1
envoy_server_live 1
envoy_h_bucket{le="+Inf"} 7 1700000000
envoy_gauge -2.5
"#;

    #[test]
    fn parses_names_labels_and_values() {
        let samples = parse(TEXT);
        assert_eq!(samples.len(), 6);
        assert_eq!(
            samples[2].labels,
            [
                ("model".to_owned(), "m1".to_owned()),
                ("outcome".to_owned(), "denied".to_owned()),
                ("reason".to_owned(), "a \"quoted\", odd\\one".to_owned()),
            ]
        );
        assert_eq!(samples[4].labels, [("le".to_owned(), "+Inf".to_owned())]);
    }

    #[test]
    fn metric_matches_exact_name_and_label_subset() {
        type Labels = &'static [(&'static str, &'static str)];
        let cases: &[(&str, Labels, Option<f64>)] = &[
            (
                "envoy_maas_requests",
                &[("model", "m1"), ("outcome", "allowed")],
                Some(3.0),
            ),
            ("envoy_maas_requests", &[("outcome", "allowed")], Some(7.0)),
            ("envoy_maas_requests", &[], Some(8.0)),
            ("envoy_maas_requests", &[("model", "m3")], None),
            ("envoy_maas", &[], None),
            ("envoy_server_live", &[], Some(1.0)),
            ("envoy_h_bucket", &[("le", "+Inf")], Some(7.0)),
            ("envoy_gauge", &[], Some(-2.5)),
        ];
        for (name, labels, expected) in cases {
            assert_eq!(metric(TEXT, name, labels), *expected, "{name} {labels:?}");
        }
    }
}
