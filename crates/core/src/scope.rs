//! What an API token may do. Authorization is a pure function of the token's scope and the
//! request's (action, app), so it is tested here and not in the HTTP layer.

use crate::AppName;
use serde::{Deserialize, Serialize};

/// Ordered: an `Admin` token may do what a `Deploy` token may, which may do what `Read` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// List names and digests, history, releases.
    Read,
    /// Everything on one app's secrets and machines: set, unset, import, deploy.
    Deploy,
    /// Create and destroy apps, manage tokens.
    Admin,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Deploy => "deploy",
            Action::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Action::Read),
            "deploy" => Some(Action::Deploy),
            "admin" => Some(Action::Admin),
            _ => None,
        }
    }
}

/// A token's reach: one app or all of them, up to an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub app: Option<AppName>,
    pub action: Action,
}

impl Scope {
    /// May this token perform `action` on `app` (`None` = an operation on no single app,
    /// such as listing or creating apps)?
    pub fn allows(&self, action: Action, app: Option<&AppName>) -> bool {
        if action > self.action {
            return false;
        }
        match (&self.app, app) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
            // An app-scoped token may only list apps (filtered to its own), never create,
            // destroy or manage tokens.
            (Some(_), None) => action == Action::Read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(s: &str) -> AppName {
        AppName::parse(s).unwrap()
    }

    #[test]
    fn read_token_cannot_write() {
        let s = Scope {
            app: Some(app("a")),
            action: Action::Read,
        };
        assert!(s.allows(Action::Read, Some(&app("a"))));
        assert!(!s.allows(Action::Deploy, Some(&app("a"))));
        assert!(!s.allows(Action::Read, Some(&app("b"))));
    }

    #[test]
    fn app_token_gets_nothing_of_another_app() {
        let s = Scope {
            app: Some(app("a")),
            action: Action::Deploy,
        };
        assert!(s.allows(Action::Deploy, Some(&app("a"))));
        assert!(!s.allows(Action::Read, Some(&app("b"))));
        assert!(!s.allows(Action::Admin, None));
    }

    #[test]
    fn global_admin_does_all() {
        let s = Scope {
            app: None,
            action: Action::Admin,
        };
        assert!(s.allows(Action::Admin, None));
        assert!(s.allows(Action::Deploy, Some(&app("z"))));
    }
}
