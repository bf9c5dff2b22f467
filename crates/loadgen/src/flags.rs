//! Command-line flags as both of this crate's tools take them: `--flag
//! value` or `--flag=value`, and `-h`/`--help` for the usage text. A tool
//! loops over the [`Flags`] iterator and asks for a value only for the flags that
//! take one, so a missing value is reported with the flag's name.

pub struct Flags<I: Iterator<Item = String>> {
    args: I,
    usage: &'static str,
}

/// One flag as given, with its value if it came after `=`.
pub struct Flag {
    pub name: String,
    inline: Option<String>,
}

impl<I: Iterator<Item = String>> Flags<I> {
    pub fn new(args: I, usage: &'static str) -> Self {
        Flags { args, usage }
    }

    /// The flag's value: after its `=`, or the next argument.
    pub fn value(&mut self, flag: &Flag) -> Result<String, String> {
        match &flag.inline {
            Some(v) => Ok(v.clone()),
            None => self
                .args
                .next()
                .ok_or_else(|| format!("{} needs a value\n\n{}", flag.name, self.usage)),
        }
    }

    /// The flag's value as a positive integer.
    pub fn positive(&mut self, flag: &Flag) -> Result<usize, String> {
        let v = self.value(flag)?;
        v.parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{}: not a positive integer: {v}", flag.name))
    }
}

/// The flags in order; `Err` with the usage text for `-h`/`--help`.
impl<I: Iterator<Item = String>> Iterator for Flags<I> {
    type Item = Result<Flag, String>;

    /// The next flag; `Err` with the usage text for `-h`/`--help`.
    fn next(&mut self) -> Option<Self::Item> {
        let arg = self.args.next()?;
        if arg == "-h" || arg == "--help" {
            return Some(Err(self.usage.to_string()));
        }
        Some(Ok(match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => Flag {
                name: f.to_string(),
                inline: Some(v.to_string()),
            },
            _ => Flag {
                name: arg,
                inline: None,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_inline_or_next_and_help_is_the_usage() {
        let args = ["--a=1", "--b", "2", "--n", "0", "--c"].map(String::from);
        let mut f = Flags::new(args.into_iter(), "USAGE");
        let a = f.next().unwrap().unwrap();
        assert_eq!(
            (a.name.as_str(), f.value(&a).unwrap().as_str()),
            ("--a", "1")
        );
        let b = f.next().unwrap().unwrap();
        assert_eq!(f.positive(&b).unwrap(), 2);
        let n = f.next().unwrap().unwrap();
        assert!(
            f.positive(&n)
                .unwrap_err()
                .contains("--n: not a positive integer")
        );
        let c = f.next().unwrap().unwrap();
        assert!(f.value(&c).unwrap_err().starts_with("--c needs a value"));
        assert!(f.next().is_none());
        let mut h = Flags::new(["-h".to_string()].into_iter(), "USAGE");
        assert_eq!(h.next().unwrap().err().unwrap(), "USAGE");
    }
}
