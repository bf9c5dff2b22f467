//! `Filter.N` matching shared by every Describe call. A resource exposes the
//! values it has for a filter name; the filter matches when any value matches
//! any pattern (EC2 semantics: OR within a filter, AND across filters), with
//! `*` and `?` wildcards.

use crate::Error;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

/// What a describable resource answers for a filter name; `None` means the
/// name is not a filter of that resource, which EC2 reports as an error.
pub trait Filterable {
    fn filter_values(&self, name: &str) -> Option<Vec<String>>;
}

/// Keeps the items every filter matches; an unknown filter name is an
/// `InvalidParameterValue`, checked even when there is nothing to filter.
pub fn apply<T, F>(items: Vec<T>, filters: &[Filter], probe: F) -> Result<Vec<T>, Error>
where
    F: Fn(&T, &str) -> Option<Vec<String>>,
{
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        // Every filter is probed, even after one has failed to match, so an
        // unknown name is reported whatever the filters before it did.
        let mut keep = true;
        for f in filters {
            let vals = probe(&item, &f.name).ok_or_else(|| unknown(&f.name))?;
            keep = keep
                && vals
                    .iter()
                    .any(|v| f.values.iter().any(|p| wildcard_match(p, v)));
        }
        if keep {
            out.push(item);
        }
    }
    Ok(out)
}

fn unknown(name: &str) -> Error {
    Error::invalid_value(format!("The filter '{name}' is invalid"))
}

/// Checks the names without items, so a bad filter fails even on an empty list.
pub fn check_names(filters: &[Filter], known: impl Fn(&str) -> bool) -> Result<(), Error> {
    match filters.iter().find(|f| !known(&f.name)) {
        Some(f) => Err(unknown(&f.name)),
        None => Ok(()),
    }
}

/// Glob matching with `*` (any run) and `?` (one character); `\` escapes.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && p[pi] == '\\' && pi + 1 < p.len() {
            if p[pi + 1] == v[vi] {
                pi += 2;
                vi += 1;
                continue;
            }
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
            continue;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
            continue;
        }
        match star {
            Some((sp, sv)) => {
                pi = sp + 1;
                vi = sv + 1;
                star = Some((sp, sv + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("web*", "webserver"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(wildcard_match("*b*d", "abcd"));
        assert!(!wildcard_match("web", "webserver"));
        assert!(wildcard_match("a\\*", "a*"));
        assert!(!wildcard_match("a\\*", "ab"));
    }

    #[test]
    fn filters_and_across_or_within() {
        let items = vec![("a", "x"), ("b", "y"), ("c", "x")];
        let probe = |i: &(&str, &str), n: &str| match n {
            "name" => Some(vec![i.0.to_string()]),
            "kind" => Some(vec![i.1.to_string()]),
            _ => None,
        };
        let f = |n: &str, v: &[&str]| Filter {
            name: n.into(),
            values: v.iter().map(|s| s.to_string()).collect(),
        };
        let got = apply(items.clone(), &[f("kind", &["x"])], probe).unwrap();
        assert_eq!(got, vec![("a", "x"), ("c", "x")]);
        let got = apply(
            items.clone(),
            &[f("kind", &["x"]), f("name", &["c", "b"])],
            probe,
        )
        .unwrap();
        assert_eq!(got, vec![("c", "x")]);
        // An unknown name after a filter that matched nothing is still refused.
        assert!(
            apply(
                items.clone(),
                &[f("kind", &["z"]), f("bogus", &["x"])],
                probe
            )
            .is_err()
        );
        assert!(apply(items, &[f("bogus", &["x"])], probe).is_err());
    }
}
