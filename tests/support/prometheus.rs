//! A strict reader of the Prometheus text exposition format (version 0.0.4), for tests:
//! every line must be blank, a comment, a `# HELP` or `# TYPE` line, or a sample; names,
//! label sets and values must be well formed; a family's `# TYPE` comes once, before its
//! samples; and no series appears twice. Where Prometheus would refuse a scrape, this
//! returns the line and why.

// Each test binary uses only part of this file.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Default)]
pub struct Family {
    pub kind: String,
    pub help: String,
    pub samples: Vec<(Labels, f64)>,
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    /// The value of the one sample of `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .families
            .get(name)?
            .samples
            .iter()
            .filter(|(have, _)| {
                labels.iter().all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, value)| *value)
            .collect();
        match matching.as_slice() {
            [value] => Some(*value),
            _ => None,
        }
    }

    pub fn sample_count(&self) -> usize {
        self.families.values().map(|f| f.samples.len()).sum()
    }
}

fn is_name(name: &str, colon: bool) -> bool {
    let mut chars = name.chars();
    let first_ok =
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'));
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn value_of(token: &str) -> Result<f64, String> {
    match token {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if token.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => {
            token.parse().map_err(|_| format!("bad value {token:?}"))
        }
        _ => Err(format!("bad value {token:?}")),
    }
}

/// Splits `name{labels} value [timestamp]` into its parts.
fn sample(line: &str) -> Result<(String, Labels, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_name(name, true) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = Labels::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            let start = match chars.peek() {
                Some((_, '}')) => break,
                Some((i, _)) => *i,
                None => return Err("unterminated label set".into()),
            };
            let eq = inner[start..].find('=').ok_or("label without `=`")? + start;
            let key = &inner[start..eq];
            if !is_name(key, false) || key.starts_with("__") {
                return Err(format!("bad label name {key:?}"));
            }
            if !inner[eq + 1..].starts_with('"') {
                return Err(format!("label {key} is not quoted"));
            }
            while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                chars.next();
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape in label {key}: {other:?}")),
                    },
                    Some((_, '"')) => break,
                    Some((_, '\n')) | None => return Err(format!("unterminated label {key}")),
                    Some((_, c)) => value.push(c),
                }
            }
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    rest = &inner[i + 1..];
                    break;
                }
                other => {
                    return Err(format!("expected `,` or `}}` after label {key}, got {other:?}"));
                }
            }
        }
    }
    if !rest.starts_with(' ') {
        return Err("expected a space before the value".into());
    }
    let mut fields = rest.split(' ').filter(|f| !f.is_empty());
    let value = value_of(fields.next().ok_or("no value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok((name.to_string(), labels, value))
}

pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    let mut series = BTreeSet::new();
    for (number, line) in text.lines().enumerate() {
        let at = |problem: String| format!("line {}: {problem}: {line:?}", number + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    let family = exposition.families.entry(name.to_string()).or_default();
                    if !family.kind.is_empty() || !family.samples.is_empty() {
                        return Err(at("TYPE after samples or twice".into()));
                    }
                    family.kind = kind.to_string();
                }
                (Some("HELP"), Some(name), help) => {
                    exposition.families.entry(name.to_string()).or_default().help =
                        help.unwrap_or_default().to_string();
                }
                _ => {}
            }
            continue;
        }
        let (name, labels, value) = sample(line).map_err(at)?;
        let family = exposition
            .families
            .get_mut(&name)
            .filter(|f| !f.kind.is_empty())
            .ok_or_else(|| at("sample of a family without a TYPE".into()))?;
        if family.kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("a counter below zero".into()));
        }
        if !series.insert((name.clone(), labels.clone())) {
            return Err(at("the same series twice".into()));
        }
        family.samples.push((labels, value));
    }
    Ok(exposition)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_prometheus_reads_and_refuses_the_rest() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\n\
                    a_total{pid=\"1\",channel=\"x=\\\"y\\\",z\"} 3\na_total{pid=\"2\"} +Inf\n";
        let parsed = parse(text).unwrap();
        assert_eq!(parsed.value("a_total", &[("pid", "1")]), Some(3.0));
        assert_eq!(parsed.families["a_total"].samples[0].0["channel"], "x=\"y\",z");
        for bad in [
            "a 1\n",
            "# TYPE a gauge\na{pid=1} 1\n",
            "# TYPE a gauge\na 1\na 2\n",
            "# TYPE a gauge\na one\n",
            "# TYPE a gauge\na{pid=\"1\"\n",
            "# TYPE a counter\na -1\n",
            "# TYPE a gauge\na 1\n# TYPE a gauge\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
