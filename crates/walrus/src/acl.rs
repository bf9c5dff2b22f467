//! Access control lists, S3-style: an owner and grants of READ, WRITE,
//! READ_ACP, WRITE_ACP or FULL_CONTROL to an account (canonical user, here
//! the account id) or to the AllUsers / AuthenticatedUsers groups. Canned
//! ACLs expand to grant lists; decisions are a pure function of the ACL
//! and who asks.

use serde::{Deserialize, Serialize};

pub const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
pub const AUTHENTICATED_USERS: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Permission {
    FullControl,
    Read,
    Write,
    ReadAcp,
    WriteAcp,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::FullControl => "FULL_CONTROL",
            Permission::Read => "READ",
            Permission::Write => "WRITE",
            Permission::ReadAcp => "READ_ACP",
            Permission::WriteAcp => "WRITE_ACP",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "FULL_CONTROL" => Permission::FullControl,
            "READ" => Permission::Read,
            "WRITE" => Permission::Write,
            "READ_ACP" => Permission::ReadAcp,
            "WRITE_ACP" => Permission::WriteAcp,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Grantee {
    /// An account, by id, with its name for display.
    Account { id: String, name: String },
    /// One of the predefined groups, by URI.
    Group(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grantee: Grantee,
    pub permission: Permission,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    pub owner_id: String,
    pub owner_name: String,
    pub grants: Vec<Grant>,
}

/// Who is asking: an account, or nobody (anonymous).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requester {
    Anonymous,
    Account { id: String, name: String },
}

impl Requester {
    pub fn account_id(&self) -> Option<&str> {
        match self {
            Requester::Account { id, .. } => Some(id),
            Requester::Anonymous => None,
        }
    }
}

impl Acl {
    /// The ACL a canned name stands for; `bucket_owner` matters only for
    /// `bucket-owner-*` on objects.
    pub fn canned(
        name: &str,
        owner_id: &str,
        owner_name: &str,
        bucket_owner: Option<(&str, &str)>,
    ) -> Option<Acl> {
        let me = Grant {
            grantee: Grantee::Account {
                id: owner_id.into(),
                name: owner_name.into(),
            },
            permission: Permission::FullControl,
        };
        let group = |uri: &str, p| Grant {
            grantee: Grantee::Group(uri.into()),
            permission: p,
        };
        let mut grants = vec![me];
        match name {
            "private" => {}
            "public-read" => grants.push(group(ALL_USERS, Permission::Read)),
            "public-read-write" => {
                grants.push(group(ALL_USERS, Permission::Read));
                grants.push(group(ALL_USERS, Permission::Write));
            }
            "authenticated-read" => grants.push(group(AUTHENTICATED_USERS, Permission::Read)),
            "bucket-owner-read" | "bucket-owner-full-control" => {
                if let Some((bid, bname)) = bucket_owner
                    && bid != owner_id
                {
                    grants.push(Grant {
                        grantee: Grantee::Account {
                            id: bid.into(),
                            name: bname.into(),
                        },
                        permission: if name == "bucket-owner-read" {
                            Permission::Read
                        } else {
                            Permission::FullControl
                        },
                    });
                }
            }
            _ => return None,
        }
        Some(Acl {
            owner_id: owner_id.into(),
            owner_name: owner_name.into(),
            grants,
        })
    }

    pub fn private(owner_id: &str, owner_name: &str) -> Acl {
        Acl::canned("private", owner_id, owner_name, None).expect("private is canned")
    }

    /// Whether `who` holds `want` (FULL_CONTROL implies everything; the
    /// owner always may read and write the ACL itself).
    pub fn allows(&self, who: &Requester, want: Permission) -> bool {
        if let Requester::Account { id, .. } = who
            && *id == self.owner_id
            && matches!(want, Permission::ReadAcp | Permission::WriteAcp)
        {
            return true;
        }
        self.grants.iter().any(|g| {
            let applies = match (&g.grantee, who) {
                (Grantee::Group(u), _) if u == ALL_USERS => true,
                (Grantee::Group(u), Requester::Account { .. }) if u == AUTHENTICATED_USERS => true,
                (Grantee::Account { id, .. }, Requester::Account { id: me, .. }) => id == me,
                _ => false,
            };
            applies && (g.permission == want || g.permission == Permission::FullControl)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(id: &str) -> Requester {
        Requester::Account {
            id: id.into(),
            name: id.into(),
        }
    }

    #[test]
    fn canned_acls_decide_as_s3_does() {
        let private = Acl::canned("private", "1", "a", None).unwrap();
        assert!(private.allows(&acct("1"), Permission::Read));
        assert!(!private.allows(&acct("2"), Permission::Read));
        assert!(!private.allows(&Requester::Anonymous, Permission::Read));

        let public = Acl::canned("public-read", "1", "a", None).unwrap();
        assert!(public.allows(&Requester::Anonymous, Permission::Read));
        assert!(!public.allows(&Requester::Anonymous, Permission::Write));
        assert!(!public.allows(&acct("2"), Permission::ReadAcp));

        let auth = Acl::canned("authenticated-read", "1", "a", None).unwrap();
        assert!(auth.allows(&acct("2"), Permission::Read));
        assert!(!auth.allows(&Requester::Anonymous, Permission::Read));

        let bofc = Acl::canned("bucket-owner-full-control", "2", "b", Some(("1", "a"))).unwrap();
        assert!(bofc.allows(&acct("1"), Permission::WriteAcp));
        assert!(Acl::canned("nonsense", "1", "a", None).is_none());
    }
}
