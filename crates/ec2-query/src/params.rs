//! Query API parameters: decoding `application/x-www-form-urlencoded`
//! bytes, and reading EC2's numbered lists (`KeyName.1`, `Filter.2.Value.3`,
//! `IpPermissions.1.IpRanges.2.CidrIp`) in index order.

use std::collections::BTreeSet;

/// Decodes form/query bytes; `+` is a space, bad escapes are kept literally
/// (the signature check already ran over the raw bytes).
pub fn parse_form(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => {
                let h = |c: u8| (c as char).to_digit(16);
                match (h(s[i + 1]), h(s[i + 2])) {
                    (Some(a), Some(b)) => {
                        out.push((a * 16 + b) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request's parameters, in arrival order.
#[derive(Clone, Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Params { pairs }
    }

    /// The last value given for a name (a repeated parameter overrides).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A parameter the action cannot do without: `MissingParameter` if absent.
    pub fn required(&self, name: &str) -> ironbark_types::Result<&str> {
        self.get(name)
            .ok_or_else(|| ironbark_types::Error::missing(name))
    }

    /// A boolean parameter (`true`/`false`, any case), `None` when absent;
    /// anything else is `InvalidParameterValue`.
    pub fn flag(&self, name: &str) -> ironbark_types::Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ironbark_types::Error::invalid_value(format!(
                "Invalid value '{v}' for {name}: true or false"
            ))),
        }
    }

    /// The sorted, distinct N of every `prefix.N` or `prefix.N.rest` parameter.
    pub fn indices(&self, prefix: &str) -> Vec<u32> {
        let mut set = BTreeSet::new();
        for (k, _) in &self.pairs {
            if let Some(rest) = k.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) {
                let n = rest.split('.').next().unwrap_or("");
                if let Ok(n) = n.parse::<u32>() {
                    set.insert(n);
                }
            }
        }
        set.into_iter().collect()
    }

    /// Values of `prefix.1`, `prefix.2`, … in index order.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.indices(prefix)
            .into_iter()
            .filter_map(|n| self.get(&format!("{prefix}.{n}")).map(str::to_string))
            .collect()
    }

    /// The parameters under `prefix.N.`, re-rooted, for each N: how nested
    /// structures (`Filter.N`, `IpPermissions.N`) are read.
    pub fn members(&self, prefix: &str) -> Vec<Params> {
        self.indices(prefix)
            .into_iter()
            .map(|n| {
                let p = format!("{prefix}.{n}.");
                Params::new(
                    self.pairs
                        .iter()
                        .filter_map(|(k, v)| k.strip_prefix(&p).map(|r| (r.to_string(), v.clone())))
                        .collect(),
                )
            })
            .collect()
    }

    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k.starts_with(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let p = parse_form(b"Action=Describe%20Regions&a=b+c&empty=&flag&bad=%zz%4");
        assert_eq!(p[0], ("Action".into(), "Describe Regions".into()));
        assert_eq!(p[1], ("a".into(), "b c".into()));
        assert_eq!(p[2], ("empty".into(), "".into()));
        assert_eq!(p[3], ("flag".into(), "".into()));
        assert_eq!(p[4], ("bad".into(), "%zz%4".into()));
    }

    #[test]
    fn numbered_lists_and_members_in_index_order() {
        let p = Params::new(parse_form(
            b"KeyName.2=b&KeyName.10=c&KeyName.1=a&Filter.1.Name=n&Filter.1.Value.2=y&Filter.1.Value.1=x&Filter.2.Name=m",
        ));
        assert_eq!(p.list("KeyName"), vec!["a", "b", "c"]);
        let f = p.members("Filter");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].get("Name"), Some("n"));
        assert_eq!(f[0].list("Value"), vec!["x", "y"]);
        assert!(f[1].list("Value").is_empty());
    }

    #[test]
    fn flags_are_true_false_or_absent() {
        let p = Params::new(vec![
            ("Force".into(), "TRUE".into()),
            ("DryRun".into(), "false".into()),
            ("Bad".into(), "yes".into()),
        ]);
        assert_eq!(p.flag("Force").unwrap(), Some(true));
        assert_eq!(p.flag("DryRun").unwrap(), Some(false));
        assert_eq!(p.flag("Missing").unwrap(), None);
        assert_eq!(
            p.flag("Bad").unwrap_err().kind,
            ironbark_types::ErrorKind::InvalidParameterValue
        );
    }
}
