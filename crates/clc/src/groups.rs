//! Security groups and their ingress rules, in EC2-Classic semantics: a
//! group is named per account, every account has a `default` group (made on
//! first need), and a rule admits a protocol and port range (ICMP type/code)
//! from a CIDR block or from the members of a group, possibly another
//! account's, named by owner and name or by id.
//!
//! The API layer hands permissions over as written by the client
//! ([`PermissionSpec`]); they are validated and expanded into [`Rule`]s here,
//! and the store applies the whole set atomically.

use ironbark_types::*;

use crate::{Caller, Cloud, check_text};

/// How a request names a group: EC2 accepts either.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupRef {
    Name(String),
    Id(String),
}

/// A source group as the client named it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceGroupSpec {
    pub user_id: Option<String>,
    pub group_name: Option<String>,
    pub group_id: Option<String>,
}

/// One permission as the client wrote it, before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PermissionSpec {
    pub protocol: Option<String>,
    pub from_port: Option<String>,
    pub to_port: Option<String>,
    pub cidrs: Vec<String>,
    pub groups: Vec<SourceGroupSpec>,
}

fn not_found(what: &str) -> Error {
    Error::new(
        ErrorKind::GroupNotFound,
        format!("The security group '{what}' does not exist"),
    )
}

fn parse_port(param: &str, v: &str) -> Result<i32> {
    v.trim().parse::<i32>().map_err(|_| {
        Error::invalid_value(format!(
            "Invalid value '{v}' for {param}. It must be an integer"
        ))
    })
}

/// Turns one permission's protocol and ports into the stored form,
/// enforcing EC2's ranges.
fn ports(spec: &PermissionSpec) -> Result<(Protocol, i32, i32)> {
    let proto_s = spec
        .protocol
        .as_deref()
        .ok_or_else(|| Error::missing("IpProtocol"))?;
    let protocol = Protocol::parse(proto_s)?;
    let from = spec
        .from_port
        .as_deref()
        .map(|v| parse_port("fromPort", v))
        .transpose()?;
    let to = spec
        .to_port
        .as_deref()
        .map(|v| parse_port("toPort", v))
        .transpose()?;
    match protocol {
        Protocol::All => Ok((protocol, -1, -1)),
        Protocol::Tcp | Protocol::Udp => {
            // EC2-Classic: no ports at all means every port.
            let (from, to) = match (from, to) {
                (None, None) => (0, 65535),
                (Some(f), Some(t)) => (f, t),
                _ => {
                    return Err(Error::invalid_value(
                        "Invalid value for portRange. Must specify both from and to ports with TCP/UDP.",
                    ));
                }
            };
            // `-1` for both is how some tools say "all ports".
            let (from, to) = if from == -1 && to == -1 {
                (0, 65535)
            } else {
                (from, to)
            };
            if !(0..=65535).contains(&from) || !(0..=65535).contains(&to) {
                return Err(Error::invalid_value(format!(
                    "Invalid value for portRange: {from}-{to}. Ports must be between 0 and 65535."
                )));
            }
            if from > to {
                return Err(Error::invalid_value(format!(
                    "Invalid value for portRange: {from}-{to}. The from port must not be greater than the to port."
                )));
            }
            Ok((protocol, from, to))
        }
        Protocol::Icmp => {
            let (t, c) = (from.unwrap_or(-1), to.unwrap_or(-1));
            if !(-1..=255).contains(&t) || !(-1..=255).contains(&c) {
                return Err(Error::invalid_value(format!(
                    "Invalid value for ICMP type/code: {t}/{c}. Each must be between -1 and 255."
                )));
            }
            if t == -1 && c != -1 {
                return Err(Error::invalid_value(
                    "Invalid value for ICMP code: a code needs a specific type (type -1 means all types and codes)",
                ));
            }
            Ok((protocol, t, c))
        }
    }
}

pub(crate) fn group_filter(g: &SecurityGroup, tags: &[Tag], name: &str) -> Option<Vec<String>> {
    let one = |s: &str| Some(vec![s.to_string()]);
    let each = |f: &dyn Fn(&Rule) -> Option<String>| {
        Some(g.rules.iter().filter_map(f).collect::<Vec<_>>())
    };
    match name {
        "description" => one(&g.description),
        "group-id" => one(g.id.as_str()),
        "group-name" => one(&g.name),
        "owner-id" => one(g.account_id.as_str()),
        "ip-permission.protocol" => each(&|r| Some(r.protocol.as_str().to_string())),
        "ip-permission.from-port" => each(&|r| Some(r.from_port.to_string())),
        "ip-permission.to-port" => each(&|r| Some(r.to_port.to_string())),
        "ip-permission.cidr" => each(&|r| match &r.source {
            RuleSource::Cidr(c) => Some(c.to_string()),
            _ => None,
        }),
        "ip-permission.group-id" => each(&|r| match &r.source {
            RuleSource::Group { group_id, .. } => Some(group_id.to_string()),
            _ => None,
        }),
        "ip-permission.group-name" => each(&|r| match &r.source {
            RuleSource::Group { group_name, .. } => Some(group_name.clone()),
            _ => None,
        }),
        "ip-permission.user-id" => each(&|r| match &r.source {
            RuleSource::Group { account_id, .. } => Some(account_id.to_string()),
            _ => None,
        }),
        _ => crate::tags::tag_filter(tags, name),
    }
}

impl Cloud {
    /// The account's `default` group, created on first need with the
    /// EC2-Classic rules: members may reach each other on every port.
    pub async fn ensure_default_group(&self, account: &AccountId) -> Result<SecurityGroup> {
        if let Some(g) = self.store.group_by_name(account, DEFAULT_GROUP).await? {
            return Ok(g);
        }
        let id = SecurityGroupId::generate();
        let me = RuleSource::Group {
            account_id: account.clone(),
            group_id: id.clone(),
            group_name: DEFAULT_GROUP.into(),
        };
        let rules = vec![
            Rule {
                protocol: Protocol::Tcp,
                from_port: 0,
                to_port: 65535,
                source: me.clone(),
            },
            Rule {
                protocol: Protocol::Udp,
                from_port: 0,
                to_port: 65535,
                source: me.clone(),
            },
            Rule {
                protocol: Protocol::Icmp,
                from_port: -1,
                to_port: -1,
                source: me,
            },
        ];
        let g = SecurityGroup {
            id,
            account_id: account.clone(),
            name: DEFAULT_GROUP.into(),
            description: "default group".into(),
            rules,
            created_ms: now_ms(),
        };
        match self.store.insert_group(&g).await {
            Ok(()) => Ok(g),
            // Another request made it first; theirs is as good.
            Err(e) if e.kind == ErrorKind::GroupDuplicate => self
                .store
                .group_by_name(account, DEFAULT_GROUP)
                .await?
                .ok_or_else(|| not_found(DEFAULT_GROUP)),
            Err(e) => Err(e),
        }
    }

    /// Finds a group of the caller's by name or id. Ids of other accounts'
    /// groups are as invisible as ids that never existed.
    pub async fn resolve_group(&self, caller: &Caller, r: &GroupRef) -> Result<SecurityGroup> {
        match r {
            GroupRef::Name(n) => {
                if n == DEFAULT_GROUP {
                    return self.ensure_default_group(&caller.account.id).await;
                }
                self.store
                    .group_by_name(&caller.account.id, n)
                    .await?
                    .ok_or_else(|| not_found(n))
            }
            GroupRef::Id(id) => {
                let gid = SecurityGroupId::parse(id)?;
                match self.store.group_by_id(&gid).await? {
                    Some(g) if g.account_id == caller.account.id => Ok(g),
                    _ => Err(not_found(id)),
                }
            }
        }
    }

    pub async fn create_security_group(
        &self,
        caller: &Caller,
        name: &str,
        description: &str,
    ) -> Result<SecurityGroupId> {
        check_text("GroupName", name, 255)?;
        check_text("GroupDescription", description, 255)?;
        if name.starts_with("sg-") {
            return Err(Error::invalid_value(format!(
                "Invalid value '{name}' for GroupName. Group names may not be in the format sg-*"
            )));
        }
        if name == DEFAULT_GROUP {
            return Err(Error::new(
                ErrorKind::GroupReserved,
                "The security group 'default' is reserved",
            ));
        }
        self.ensure_default_group(&caller.account.id).await?;
        let g = SecurityGroup {
            id: SecurityGroupId::generate(),
            account_id: caller.account.id.clone(),
            name: name.to_string(),
            description: description.to_string(),
            rules: vec![],
            created_ms: now_ms(),
        };
        self.store.insert_group(&g).await?;
        Ok(g.id)
    }

    pub async fn delete_security_group(&self, caller: &Caller, r: &GroupRef) -> Result<()> {
        let g = self.resolve_group(caller, r).await?;
        if g.name == DEFAULT_GROUP {
            return Err(Error::new(
                ErrorKind::CannotDelete,
                "the specified group: \"default\" name cannot be deleted by a user",
            ));
        }
        self.store.delete_group(&g.id).await
    }

    pub async fn describe_security_groups(
        &self,
        caller: &Caller,
        names: &[String],
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<(SecurityGroup, Vec<Tag>)>> {
        let verbose = caller.is_admin() && names.iter().any(|n| n == "verbose");
        let names: Vec<&String> = names
            .iter()
            .filter(|n| !(verbose && *n == "verbose"))
            .collect();
        let scope = if verbose {
            None
        } else {
            Some(&caller.account.id)
        };
        let mut all = self.store.list_groups(scope).await?;
        // Accounts made before default groups came with them get one now.
        if !all
            .iter()
            .any(|g| g.name == DEFAULT_GROUP && g.account_id == caller.account.id)
        {
            self.ensure_default_group(&caller.account.id).await?;
            all = self.store.list_groups(scope).await?;
        }
        for n in &names {
            if !all.iter().any(|g| &g.name == *n) {
                return Err(not_found(n));
            }
        }
        for id in ids {
            SecurityGroupId::parse(id)?;
            if !all.iter().any(|g| g.id.as_str() == id) {
                return Err(not_found(id));
            }
        }
        let tags = self.tags_by_resource(scope).await?;
        let selected: Vec<(SecurityGroup, Vec<Tag>)> = all
            .into_iter()
            .filter(|g| names.is_empty() || names.iter().any(|n| **n == g.name))
            .filter(|g| ids.is_empty() || ids.iter().any(|i| i == g.id.as_str()))
            .map(|g| {
                let t = tags.get(g.id.as_str()).cloned().unwrap_or_default();
                (g, t)
            })
            .collect();
        filter::apply(selected, filters, |(g, t), n| group_filter(g, t, n))
    }

    /// Validates the permissions and resolves their source groups.
    async fn rules_from(&self, caller: &Caller, perms: &[PermissionSpec]) -> Result<Vec<Rule>> {
        if perms.is_empty() {
            return Err(Error::missing("IpPermissions"));
        }
        let mut rules = Vec::new();
        for p in perms {
            if p.cidrs.is_empty() && p.groups.is_empty() {
                return Err(Error::missing("CidrIp or SourceSecurityGroupName"));
            }
            let (protocol, from_port, to_port) = ports(p)?;
            for c in &p.cidrs {
                let cidr: Ipv4Cidr = c.trim().parse()?;
                rules.push(Rule {
                    protocol,
                    from_port,
                    to_port,
                    source: RuleSource::Cidr(cidr),
                });
            }
            for s in &p.groups {
                let g = self.resolve_source_group(caller, s).await?;
                rules.push(Rule {
                    protocol,
                    from_port,
                    to_port,
                    source: RuleSource::Group {
                        account_id: g.account_id,
                        group_id: g.id,
                        group_name: g.name,
                    },
                });
            }
        }
        Ok(rules)
    }

    /// A source group may be another account's: named by owner and name
    /// (the classic form euca2ools sends) or by id.
    async fn resolve_source_group(
        &self,
        caller: &Caller,
        s: &SourceGroupSpec,
    ) -> Result<SecurityGroup> {
        if let Some(id) = &s.group_id {
            let gid = SecurityGroupId::parse(id)?;
            return self
                .store
                .group_by_id(&gid)
                .await?
                .ok_or_else(|| not_found(id));
        }
        let name = s
            .group_name
            .as_deref()
            .ok_or_else(|| Error::missing("SourceSecurityGroupName"))?;
        let owner = match s.user_id.as_deref() {
            None | Some("") => caller.account.id.clone(),
            Some(u) => match AccountId::parse(u) {
                Ok(id) => id,
                // Eucalyptus also let an account be named by its name.
                Err(_) => self
                    .store
                    .account_by_name(u)
                    .await?
                    .map(|a| a.id)
                    .ok_or_else(|| not_found(&format!("{u}/{name}")))?,
            },
        };
        if name == DEFAULT_GROUP && owner == caller.account.id {
            return self.ensure_default_group(&owner).await;
        }
        self.store
            .group_by_name(&owner, name)
            .await?
            .ok_or_else(|| not_found(name))
    }

    pub async fn authorize_ingress(
        &self,
        caller: &Caller,
        target: &GroupRef,
        perms: &[PermissionSpec],
    ) -> Result<()> {
        let g = self.resolve_group(caller, target).await?;
        let rules = self.rules_from(caller, perms).await?;
        self.store.add_rules(&g.id, &rules).await?;
        self.push_rules_change().await;
        Ok(())
    }

    pub async fn revoke_ingress(
        &self,
        caller: &Caller,
        target: &GroupRef,
        perms: &[PermissionSpec],
    ) -> Result<()> {
        let g = self.resolve_group(caller, target).await?;
        let rules = self.rules_from(caller, perms).await?;
        self.store.remove_rules(&g.id, &rules).await?;
        self.push_rules_change().await;
        Ok(())
    }

    /// Rules are part of the zone's desired state: the CC enforces a change
    /// once it has it, so it is sent at once (the loop repairs a lost send).
    async fn push_rules_change(&self) {
        if let Err(e) = self.push_desired().await {
            tracing::warn!(error = %e, "sending the new rules failed; the reconcile loop retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{caller, cloud};

    fn tcp(from: &str, to: &str, cidr: &str) -> PermissionSpec {
        PermissionSpec {
            protocol: Some("tcp".into()),
            from_port: Some(from.into()),
            to_port: Some(to.into()),
            cidrs: vec![cidr.into()],
            groups: vec![],
        }
    }

    #[tokio::test]
    async fn group_life_cycle_and_errors() {
        let c = cloud().await;
        let alice = caller(&c, "alice").await;
        let bob = caller(&c, "bob").await;
        let web = c
            .create_security_group(&alice, "web", "web servers")
            .await
            .unwrap();
        let by_name = GroupRef::Name("web".into());
        let kinds = |r: Result<()>| r.unwrap_err().kind;

        c.authorize_ingress(&alice, &by_name, &[tcp("22", "22", "0.0.0.0/0")])
            .await
            .unwrap();
        assert_eq!(
            kinds(
                c.authorize_ingress(&alice, &by_name, &[tcp("22", "22", "0.0.0.0/0")])
                    .await
            ),
            ErrorKind::PermissionDuplicate
        );
        assert_eq!(
            kinds(
                c.authorize_ingress(&alice, &by_name, &[tcp("22", "22", "10.0.0.0/33")])
                    .await
            ),
            ErrorKind::InvalidParameterValue
        );
        assert_eq!(
            kinds(
                c.authorize_ingress(&alice, &by_name, &[tcp("80", "70000", "0.0.0.0/0")])
                    .await
            ),
            ErrorKind::InvalidParameterValue
        );
        assert_eq!(
            kinds(
                c.authorize_ingress(&alice, &by_name, &[tcp("90", "80", "0.0.0.0/0")])
                    .await
            ),
            ErrorKind::InvalidParameterValue
        );
        assert_eq!(
            kinds(
                c.authorize_ingress(
                    &alice,
                    &GroupRef::Name("nope".into()),
                    &[tcp("1", "1", "0.0.0.0/0")]
                )
                .await
            ),
            ErrorKind::GroupNotFound
        );
        assert_eq!(
            kinds(
                c.revoke_ingress(&alice, &by_name, &[tcp("23", "23", "0.0.0.0/0")])
                    .await
            ),
            ErrorKind::PermissionNotFound
        );
        // Bob cannot touch alice's group by id, and sees only his own.
        assert_eq!(
            kinds(
                c.authorize_ingress(
                    &bob,
                    &GroupRef::Id(web.to_string()),
                    &[tcp("1", "1", "0.0.0.0/0")]
                )
                .await
            ),
            ErrorKind::GroupNotFound
        );
        let bobs = c
            .describe_security_groups(&bob, &[], &[], &[])
            .await
            .unwrap();
        assert_eq!(bobs.len(), 1);
        assert_eq!(bobs[0].0.name, "default");

        // Bob lets alice's web group in by owner and name; alice can't delete it now.
        c.create_security_group(&bob, "db", "databases")
            .await
            .unwrap();
        let from_web = PermissionSpec {
            protocol: Some("tcp".into()),
            from_port: Some("5432".into()),
            to_port: Some("5432".into()),
            cidrs: vec![],
            groups: vec![SourceGroupSpec {
                user_id: Some(alice.account.id.to_string()),
                group_name: Some("web".into()),
                group_id: None,
            }],
        };
        c.authorize_ingress(
            &bob,
            &GroupRef::Name("db".into()),
            std::slice::from_ref(&from_web),
        )
        .await
        .unwrap();
        assert_eq!(
            kinds(c.delete_security_group(&alice, &by_name).await),
            ErrorKind::GroupInUse
        );
        c.revoke_ingress(&bob, &GroupRef::Name("db".into()), &[from_web])
            .await
            .unwrap();
        c.delete_security_group(&alice, &by_name).await.unwrap();

        assert_eq!(
            kinds(
                c.delete_security_group(&alice, &GroupRef::Name("default".into()))
                    .await
            ),
            ErrorKind::CannotDelete
        );
        assert_eq!(
            c.create_security_group(&alice, "default", "x")
                .await
                .unwrap_err()
                .kind,
            ErrorKind::GroupReserved
        );
        assert_eq!(
            c.create_security_group(&alice, "x", "")
                .await
                .unwrap_err()
                .kind,
            ErrorKind::MissingParameter
        );
        assert_eq!(
            c.describe_security_groups(&alice, &[], &["sg-zz".into()], &[])
                .await
                .unwrap_err()
                .kind,
            ErrorKind::GroupIdMalformed
        );
    }

    #[tokio::test]
    async fn icmp_all_and_legacy_defaults() {
        let c = cloud().await;
        let a = caller(&c, "alice").await;
        let g = GroupRef::Name("default".into());
        let icmp = PermissionSpec {
            protocol: Some("icmp".into()),
            from_port: Some("8".into()),
            to_port: Some("0".into()),
            cidrs: vec!["192.0.2.0/24".into()],
            groups: vec![],
        };
        c.authorize_ingress(&a, &g, &[icmp]).await.unwrap();
        let bad = PermissionSpec {
            protocol: Some("icmp".into()),
            from_port: Some("-1".into()),
            to_port: Some("3".into()),
            cidrs: vec!["192.0.2.0/24".into()],
            groups: vec![],
        };
        assert!(c.authorize_ingress(&a, &g, &[bad]).await.is_err());
        let all = PermissionSpec {
            protocol: Some("-1".into()),
            cidrs: vec!["198.51.100.7/32".into()],
            ..Default::default()
        };
        c.authorize_ingress(&a, &g, &[all]).await.unwrap();
        let got = c
            .describe_security_groups(&a, &["default".into()], &[], &[])
            .await
            .unwrap();
        let rules = &got[0].0.rules;
        assert!(
            rules
                .iter()
                .any(|r| r.protocol == Protocol::Icmp && r.from_port == 8 && r.to_port == 0)
        );
        assert!(
            rules
                .iter()
                .any(|r| r.protocol == Protocol::All && r.from_port == -1)
        );
        let f = Filter {
            name: "ip-permission.cidr".into(),
            values: vec!["198.51.100.7/32".into()],
        };
        assert_eq!(
            c.describe_security_groups(&a, &[], &[], &[f])
                .await
                .unwrap()
                .len(),
            1
        );
        let f = Filter {
            name: "ip-permission.cidr".into(),
            values: vec!["1.1.1.1/32".into()],
        };
        assert!(
            c.describe_security_groups(&a, &[], &[], &[f])
                .await
                .unwrap()
                .is_empty()
        );
    }
}
