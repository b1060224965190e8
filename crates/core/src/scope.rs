//! What an API token may do. Authorization is a pure function of the token's scope and the
//! request's (action, app), so it is tested here and not in the HTTP layer.

use crate::AppName;
use serde::{Deserialize, Serialize};

/// What a token may do. `Read` < `Deploy` < `Admin`: each may do what the one before it may.
/// `Join` stands apart: it registers hosts (what an agent needs to join the cluster) and does
/// nothing else, so that the token an agent keeps for re-registering is not an admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// List names and digests, history, releases.
    Read,
    /// Everything on one app's secrets and machines: set, unset, import, deploy.
    Deploy,
    /// Create and destroy apps, manage tokens, register hosts.
    Admin,
    /// Register hosts, nothing else.
    Join,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Deploy => "deploy",
            Action::Admin => "admin",
            Action::Join => "join",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Action::Read),
            "deploy" => Some(Action::Deploy),
            "admin" => Some(Action::Admin),
            "join" => Some(Action::Join),
            _ => None,
        }
    }

    /// Does a token of this action cover `wanted`?
    fn covers(self, wanted: Action) -> bool {
        use Action::*;
        match (self, wanted) {
            (Join, w) => w == Join,
            (Admin, _) => true,
            (_, Join | Admin) => false,
            (Deploy, _) => true,
            (Read, w) => w == Read,
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
        if !self.action.covers(action) {
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
    fn a_join_token_registers_hosts_and_nothing_else() {
        let join = Scope {
            app: None,
            action: Action::Join,
        };
        assert!(join.allows(Action::Join, None));
        for action in [Action::Read, Action::Deploy, Action::Admin] {
            assert!(!join.allows(action, None), "{action:?}");
            assert!(!join.allows(action, Some(&app("a"))), "{action:?}");
        }
        // Only a global admin may register hosts besides; app tokens never.
        let admin = Scope {
            app: None,
            action: Action::Admin,
        };
        assert!(admin.allows(Action::Join, None));
        for action in [Action::Read, Action::Deploy, Action::Admin] {
            for app_scope in [None, Some(app("a"))] {
                let s = Scope {
                    app: app_scope.clone(),
                    action,
                };
                assert_eq!(
                    s.allows(Action::Join, None),
                    action == Action::Admin && app_scope.is_none(),
                    "{s:?}"
                );
            }
        }
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
