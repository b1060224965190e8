//! A validated, atomic change to one app's secrets. Either every pair of a `set`/`import`
//! passes or the whole change is refused: there is no partially applied write.

use crate::{NameError, SecretName, SecretValue, MAX_APP_BYTES, MAX_VALUE_BYTES};
use std::collections::BTreeSet;
use std::fmt;

/// One reason a change was refused. Messages name the secret, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{0}")]
    Name(#[from] NameError),
    #[error("value of {0} contains a NUL byte, which cannot be passed in an environment variable")]
    NulByte(String),
    #[error("value of {name} is {len} bytes; the limit is 65536 bytes (64 KiB)")]
    ValueTooLarge { name: String, len: usize },
    #[error("{0} is given more than once")]
    Duplicate(String),
    #[error("{0} is both set and unset in the same change")]
    SetAndUnset(String),
    #[error("{0} is not set, so it cannot be unset")]
    NotSet(String),
    #[error(
        "the app's secrets would total {total} bytes; the limit is 524288 bytes (512 KiB) per app"
    )]
    AppTooLarge { total: usize },
    #[error("nothing to change: give at least one NAME=VALUE pair (or NAME to unset)")]
    Empty,
}

/// All the problems found in a change, so that a user fixes them in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError(pub Vec<Problem>);

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

/// A change that passed every check that does not need the app's current state.
#[derive(Debug)]
pub struct ChangeSet {
    sets: Vec<(SecretName, SecretValue)>,
    unsets: Vec<SecretName>,
}

impl ChangeSet {
    pub fn new(
        sets: Vec<(String, SecretValue)>,
        unsets: Vec<String>,
    ) -> Result<Self, ValidationError> {
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        let mut ok_sets = Vec::with_capacity(sets.len());
        for (raw, value) in sets {
            if !seen.insert(raw.clone()) {
                problems.push(Problem::Duplicate(clip(&raw)));
                continue;
            }
            let name = match SecretName::parse(&raw) {
                Ok(n) => n,
                Err(e) => {
                    problems.push(e.into());
                    continue;
                }
            };
            if value.expose_bytes().contains(&0) {
                problems.push(Problem::NulByte(raw));
                continue;
            }
            if value.len() > MAX_VALUE_BYTES {
                problems.push(Problem::ValueTooLarge {
                    name: raw,
                    len: value.len(),
                });
                continue;
            }
            ok_sets.push((name, value));
        }
        let mut ok_unsets = Vec::with_capacity(unsets.len());
        let mut unset_seen = BTreeSet::new();
        for raw in unsets {
            if seen.contains(&raw) {
                problems.push(Problem::SetAndUnset(clip(&raw)));
                continue;
            }
            if !unset_seen.insert(raw.clone()) {
                problems.push(Problem::Duplicate(clip(&raw)));
                continue;
            }
            match SecretName::parse(&raw) {
                Ok(n) => ok_unsets.push(n),
                Err(e) => problems.push(e.into()),
            }
        }
        if problems.is_empty() && ok_sets.is_empty() && ok_unsets.is_empty() {
            problems.push(Problem::Empty);
        }
        if problems.is_empty() {
            Ok(Self {
                sets: ok_sets,
                unsets: ok_unsets,
            })
        } else {
            Err(ValidationError(problems))
        }
    }

    pub fn sets(&self) -> &[(SecretName, SecretValue)] {
        &self.sets
    }

    pub fn unsets(&self) -> &[SecretName] {
        &self.unsets
    }

    /// Checks the change against the app's current secrets (name → value length): unset names
    /// must exist and the app must stay within [`MAX_APP_BYTES`].
    pub fn check_against(&self, current: &[(SecretName, usize)]) -> Result<(), ValidationError> {
        let mut problems = Vec::new();
        for n in &self.unsets {
            if !current.iter().any(|(c, _)| c == n) {
                problems.push(Problem::NotSet(n.to_string()));
            }
        }
        let kept: usize = current
            .iter()
            .filter(|(c, _)| !self.unsets.contains(c) && !self.sets.iter().any(|(s, _)| s == c))
            .map(|(_, len)| *len)
            .sum();
        let total = kept + self.sets.iter().map(|(_, v)| v.len()).sum::<usize>();
        if total > MAX_APP_BYTES {
            problems.push(Problem::AppTooLarge { total });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError(problems))
        }
    }

    /// Names touched, in order: the sets then the unsets. Used for release descriptions.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.sets.is_empty() {
            let names: Vec<&str> = self.sets.iter().map(|(n, _)| n.as_str()).collect();
            parts.push(format!("Set {}", names.join(", ")));
        }
        if !self.unsets.is_empty() {
            let names: Vec<&str> = self.unsets.iter().map(|n| n.as_str()).collect();
            parts.push(format!("Unset {}", names.join(", ")));
        }
        parts.join("; ")
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> SecretValue {
        SecretValue::from_str_value(s)
    }

    fn set(pairs: &[(&str, &str)]) -> Result<ChangeSet, ValidationError> {
        ChangeSet::new(
            pairs.iter().map(|(n, x)| (n.to_string(), v(x))).collect(),
            vec![],
        )
    }

    #[test]
    fn one_bad_pair_refuses_the_whole_change() {
        let err = set(&[("A", "1"), ("B", "2"), ("3C", "3"), ("D", "4"), ("E", "5")]).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.to_string().contains("3C"));
    }

    #[test]
    fn reports_every_problem_and_never_the_value() {
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        let err = ChangeSet::new(
            vec![
                ("COFFER_X".into(), v("1")),
                (
                    "NUL".into(),
                    SecretValue::new(b"se\0cret-sentinel".to_vec()),
                ),
                ("BIG".into(), v(&big)),
                ("A".into(), v("1")),
                ("A".into(), v("2")),
            ],
            vec!["A".into()],
        )
        .unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.0.len(), 5, "{msg}");
        assert!(!msg.contains("sentinel"));
        assert!(msg.contains("reserved prefix"));
    }

    #[test]
    fn exactly_64k_is_allowed() {
        assert!(set(&[("A", &"x".repeat(MAX_VALUE_BYTES))]).is_ok());
    }

    #[test]
    fn empty_change_is_refused() {
        assert_eq!(
            ChangeSet::new(vec![], vec![]).unwrap_err().0,
            vec![Problem::Empty]
        );
    }

    #[test]
    fn app_total_counts_replacements_once() {
        let n = |s: &str| SecretName::parse(s).unwrap();
        let current = vec![(n("A"), 300 * 1024), (n("B"), 200 * 1024)];
        // Replacing A by a small value keeps the app within the limit.
        assert!(set(&[("A", "small")])
            .unwrap()
            .check_against(&current)
            .is_ok());
        // Adding 60 KiB on top of 500 KiB goes over.
        let err = set(&[("C", &"x".repeat(60 * 1024))])
            .unwrap()
            .check_against(&current);
        assert!(matches!(err.unwrap_err().0[0], Problem::AppTooLarge { .. }));
        // Unsetting B makes room.
        let c = ChangeSet::new(
            vec![("C".into(), v(&"x".repeat(60 * 1024)))],
            vec!["B".into()],
        );
        assert!(c.unwrap().check_against(&current).is_ok());
    }

    #[test]
    fn unset_of_missing_name_is_refused() {
        let c = ChangeSet::new(vec![], vec!["NOPE".into()]).unwrap();
        assert_eq!(
            c.check_against(&[]).unwrap_err().0,
            vec![Problem::NotSet("NOPE".into())]
        );
    }
}
