//! One function per EC2 action: read its parameters, call the CLC, write its
//! response. The response writers follow EC2's element names and order
//! exactly, since some clients parse positionally.

use std::collections::BTreeMap;

use ironbark_clc::{
    AddressRef, Caller, Cloud, GroupRef, LaunchPermissionChange, PermissionSpec, RegisterImage,
    RunRequest, SourceGroupSpec,
};
use ironbark_types::*;

use crate::xml::Writer;

mod ebs;
use crate::{NEWEST_VERSION, OLDEST_VERSION, Params};

/// Runs one Query API request for an authenticated caller; returns the XML body.
pub async fn handle(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    request_id: &str,
) -> Result<String> {
    let action = match p.get("Action") {
        Some(a) if !a.is_empty() => a,
        _ => {
            return Err(Error::new(
                ErrorKind::MissingAction,
                "The request must contain the parameter Action",
            ));
        }
    };
    let version = p.required("Version")?;
    if !is_date(version) || !(OLDEST_VERSION..=NEWEST_VERSION).contains(&version) {
        return Err(Error::invalid_value(format!(
            "Unsupported API version '{version}': ironbark accepts {OLDEST_VERSION} to {NEWEST_VERSION}"
        )));
    }
    let mut r = Response::new(action, version, request_id);
    match action {
        "DescribeRegions" => describe_regions(cloud, p, &mut r)?,
        "DescribeAvailabilityZones" => describe_zones(cloud, caller, p, &mut r).await?,
        "CreateKeyPair" => create_key_pair(cloud, caller, p, &mut r).await?,
        "ImportKeyPair" => import_key_pair(cloud, caller, p, &mut r).await?,
        "DescribeKeyPairs" => describe_key_pairs(cloud, caller, p, &mut r).await?,
        "DeleteKeyPair" => {
            cloud
                .delete_key_pair(caller, p.get("KeyName"), p.get("KeyPairId"))
                .await?;
            r.w.elem("return", "true");
        }
        "CreateSecurityGroup" => create_group(cloud, caller, p, &mut r).await?,
        "DeleteSecurityGroup" => {
            cloud.delete_security_group(caller, &group_ref(p)?).await?;
            r.w.elem("return", "true");
        }
        "DescribeSecurityGroups" => describe_groups(cloud, caller, p, &mut r).await?,
        "AuthorizeSecurityGroupIngress" => {
            cloud
                .authorize_ingress(caller, &group_ref(p)?, &permissions(p)?)
                .await?;
            r.w.elem("return", "true");
        }
        "RevokeSecurityGroupIngress" => {
            cloud
                .revoke_ingress(caller, &group_ref(p)?, &permissions(p)?)
                .await?;
            r.w.elem("return", "true");
        }
        "CreateTags" => {
            cloud
                .create_tags(caller, &p.list("ResourceId"), &tag_pairs(p))
                .await?;
            r.w.elem("return", "true");
        }
        "DeleteTags" => {
            cloud
                .delete_tags(caller, &p.list("ResourceId"), &tag_pairs(p))
                .await?;
            r.w.elem("return", "true");
        }
        "DescribeTags" => describe_tags(cloud, caller, p, &mut r).await?,
        "RunInstances" => run_instances(cloud, caller, p, &mut r).await?,
        "DescribeInstances" => describe_instances(cloud, caller, p, &mut r).await?,
        "TerminateInstances" => terminate_instances(cloud, caller, p, &mut r).await?,
        "RebootInstances" => {
            cloud
                .reboot_instances(caller, &p.list("InstanceId"))
                .await?;
            r.w.elem("return", "true");
        }
        "GetConsoleOutput" => {
            let id = p.required("InstanceId")?;
            let (i, text) = cloud.console_output(caller, id).await?;
            r.w.elem("instanceId", i.id.as_str());
            r.w.elem("timestamp", &iso8601_ms(now_ms()));
            r.w.elem("output", &base64_encode(text.as_bytes()));
        }
        "DescribeInstanceStatus" => describe_instance_status(cloud, caller, p, &mut r).await?,
        "AllocateAddress" => {
            match p.get("Domain") {
                None | Some("standard") => {}
                Some(d) => {
                    return Err(Error::new(
                        ErrorKind::UnsupportedOperation,
                        format!(
                            "Domain '{d}' is not supported: addresses here are EC2-Classic (standard) addresses"
                        ),
                    ));
                }
            }
            let a = cloud.allocate_address(caller).await?;
            r.w.elem("publicIp", &a.public_ip);
            r.w.elem("domain", "standard");
            r.w.elem("allocationId", a.allocation_id.as_str());
        }
        "ReleaseAddress" => {
            cloud.release_address(caller, &address_ref(p)?).await?;
            r.w.elem("return", "true");
        }
        "AssociateAddress" => {
            let instance = p.required("InstanceId")?;
            let allow = p.flag("AllowReassociation")?;
            let a = cloud
                .associate_address(caller, &address_ref(p)?, instance, allow)
                .await?;
            r.w.elem("return", "true");
            if let Some(id) = &a.association_id {
                r.w.elem("associationId", id.as_str());
            }
        }
        "DisassociateAddress" => {
            cloud
                .disassociate_address(caller, p.get("PublicIp"), p.get("AssociationId"))
                .await?;
            r.w.elem("return", "true");
        }
        "DescribeAddresses" => {
            let views = cloud
                .describe_addresses(
                    caller,
                    &p.list("PublicIp"),
                    &p.list("AllocationId"),
                    &filters(p)?,
                )
                .await?;
            r.w.open("addressesSet");
            for v in views {
                r.w.open("item");
                r.w.elem("publicIp", &v.public_ip);
                if let Some(id) = &v.allocation_id {
                    r.w.elem("allocationId", id.as_str());
                }
                r.w.elem("domain", "standard");
                match (&v.holder, &v.instance_id) {
                    (Some(h), _) => r.w.elem("instanceId", h),
                    (None, Some(i)) => r.w.elem("instanceId", i.as_str()),
                    (None, None) => r.w.empty("instanceId"),
                }
                if let Some(id) = &v.association_id {
                    r.w.elem("associationId", id.as_str());
                }
                r.w.close("item");
            }
            r.w.close("addressesSet");
        }
        "RegisterImage" => register_image(cloud, caller, p, &mut r).await?,
        "DescribeImages" => describe_images(cloud, caller, p, &mut r).await?,
        "DeregisterImage" => {
            let id = p.required("ImageId")?;
            cloud.deregister_image(caller, id).await?;
            r.w.elem("return", "true");
        }
        "DescribeImageAttribute" => describe_image_attribute(cloud, caller, p, &mut r).await?,
        "ModifyImageAttribute" => {
            modify_image_attribute(cloud, caller, p).await?;
            r.w.elem("return", "true");
        }
        "ResetImageAttribute" => {
            let id = p.required("ImageId")?;
            match p.get("Attribute") {
                Some("launchPermission") => cloud.reset_image_launch(caller, id).await?,
                other => {
                    return Err(Error::invalid_value(format!(
                        "Invalid value '{}' for Attribute: only launchPermission can be reset",
                        other.unwrap_or("")
                    )));
                }
            }
            r.w.elem("return", "true");
        }
        other if ebs::handle(other, cloud, caller, p, &mut r).await? => {}
        other => {
            return Err(Error::new(
                ErrorKind::InvalidAction,
                format!("The action {other} is not valid for this web service."),
            ));
        }
    }
    Ok(r.finish())
}

/// An elastic IP named by `PublicIp` or `AllocationId` (exactly one).
fn address_ref(p: &Params) -> Result<AddressRef> {
    match (p.get("PublicIp"), p.get("AllocationId")) {
        (Some(_), Some(_)) => Err(Error::new(
            ErrorKind::InvalidParameterCombination,
            "Specify either PublicIp or AllocationId, not both",
        )),
        (Some(ip), None) => Ok(AddressRef::PublicIp(ip.to_string())),
        (None, Some(id)) => Ok(AddressRef::AllocationId(id.to_string())),
        (None, None) => Err(Error::missing("PublicIp")),
    }
}

fn is_date(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// A response document under construction: `<{Action}Response xmlns=…>`.
struct Response {
    w: Writer,
    root: String,
}

impl Response {
    fn new(action: &str, version: &str, request_id: &str) -> Self {
        let mut w = Writer::new();
        w.raw("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let root = format!("{action}Response");
        w.open_ns(&root, &format!("http://ec2.amazonaws.com/doc/{version}/"));
        w.elem("requestId", request_id);
        Response { w, root }
    }

    fn finish(mut self) -> String {
        self.w.close(&self.root);
        self.w.finish()
    }
}

fn filters(p: &Params) -> Result<Vec<Filter>> {
    p.members("Filter")
        .into_iter()
        .map(|m| {
            let name = m
                .get("Name")
                .ok_or_else(|| Error::missing("Filter.N.Name"))?
                .to_string();
            Ok(Filter {
                name,
                values: m.list("Value"),
            })
        })
        .collect()
}

fn tag_set(w: &mut Writer, tags: &[Tag]) {
    w.open("tagSet");
    for t in tags {
        w.open("item");
        w.elem("key", &t.key);
        w.elem("value", &t.value);
        w.close("item");
    }
    w.close("tagSet");
}

fn describe_regions(cloud: &Cloud, p: &Params, r: &mut Response) -> Result<()> {
    let regions = cloud.describe_regions(&p.list("RegionName"), &filters(p)?)?;
    r.w.open("regionInfo");
    for reg in regions {
        r.w.open("item");
        r.w.elem("regionName", &reg.name);
        r.w.elem("regionEndpoint", &reg.endpoint);
        r.w.elem("optInStatus", "opt-in-not-required");
        r.w.close("item");
    }
    r.w.close("regionInfo");
    Ok(())
}

async fn describe_zones(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let zones = cloud
        .describe_availability_zones(caller, &p.list("ZoneName"), &filters(p)?)
        .await?;
    r.w.open("availabilityZoneInfo");
    for z in zones {
        r.w.open("item");
        r.w.elem("zoneName", &z.zone_name);
        r.w.elem("zoneState", &z.state);
        r.w.elem("regionName", &z.region);
        r.w.open("messageSet");
        for m in &z.messages {
            r.w.open("item");
            r.w.elem("message", m);
            r.w.close("item");
        }
        r.w.close("messageSet");
        r.w.close("item");
    }
    r.w.close("availabilityZoneInfo");
    Ok(())
}

async fn create_key_pair(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let name = p.required("KeyName")?;
    match p.get("KeyFormat") {
        None | Some("pem") => {}
        Some(other) => {
            return Err(Error::invalid_value(format!(
                "Unsupported KeyFormat '{other}': ironbark returns private keys in pem format"
            )));
        }
    }
    let tags = tag_specs(p, "key-pair")?;
    cloud.check_new_tags(&tags)?;
    let created = cloud
        .create_key_pair(caller, name, p.get("KeyType"))
        .await?;
    let kp = &created.key_pair;
    if !tags.is_empty() {
        cloud
            .create_tags(caller, &[kp.id.to_string()], &tags)
            .await?;
    }
    r.w.elem("keyName", &kp.name);
    r.w.elem("keyFingerprint", &kp.fingerprint);
    r.w.elem("keyMaterial", &created.private_key);
    r.w.elem("keyPairId", kp.id.as_str());
    Ok(())
}

async fn import_key_pair(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let name = p.required("KeyName")?;
    let material = p.required("PublicKeyMaterial")?;
    let tags = tag_specs(p, "key-pair")?;
    cloud.check_new_tags(&tags)?;
    let kp = cloud.import_key_pair(caller, name, material).await?;
    if !tags.is_empty() {
        cloud
            .create_tags(caller, &[kp.id.to_string()], &tags)
            .await?;
    }
    r.w.elem("keyName", &kp.name);
    r.w.elem("keyFingerprint", &kp.fingerprint);
    r.w.elem("keyPairId", kp.id.as_str());
    Ok(())
}

async fn describe_key_pairs(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let keys = cloud
        .describe_key_pairs(
            caller,
            &p.list("KeyName"),
            &p.list("KeyPairId"),
            &filters(p)?,
        )
        .await?;
    let include_public = p
        .get("IncludePublicKey")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    r.w.open("keySet");
    for (k, tags) in keys {
        r.w.open("item");
        r.w.elem("keyPairId", k.id.as_str());
        r.w.elem("keyName", &k.name);
        r.w.elem("keyFingerprint", &k.fingerprint);
        r.w.elem("keyType", &k.key_type);
        tag_set(&mut r.w, &tags);
        if include_public {
            r.w.elem("publicKey", &k.public_key);
        }
        r.w.elem("createTime", &iso8601_ms(k.created_ms));
        r.w.close("item");
    }
    r.w.close("keySet");
    Ok(())
}

async fn create_group(cloud: &Cloud, caller: &Caller, p: &Params, r: &mut Response) -> Result<()> {
    if p.get("VpcId").is_some_and(|v| !v.is_empty()) {
        return Err(Error::new(
            ErrorKind::UnsupportedOperation,
            "VPCs are not supported: security groups here are EC2-Classic groups",
        ));
    }
    let name = p.required("GroupName")?;
    let desc = p.required("GroupDescription")?;
    let tags = tag_specs(p, "security-group")?;
    cloud.check_new_tags(&tags)?;
    let id = cloud.create_security_group(caller, name, desc).await?;
    if !tags.is_empty() {
        cloud.create_tags(caller, &[id.to_string()], &tags).await?;
    }
    r.w.elem("return", "true");
    r.w.elem("groupId", id.as_str());
    Ok(())
}

fn group_ref(p: &Params) -> Result<GroupRef> {
    match (p.get("GroupId"), p.get("GroupName")) {
        (Some(id), _) if !id.is_empty() => Ok(GroupRef::Id(id.to_string())),
        (_, Some(n)) if !n.is_empty() => Ok(GroupRef::Name(n.to_string())),
        _ => Err(Error::missing("GroupName or GroupId")),
    }
}

/// Reads permissions in both forms EC2 has accepted: the structured
/// `IpPermissions.N.*` and the classic flat `IpProtocol`/`CidrIp`/
/// `SourceSecurityGroupName` that euca2ools and old SDKs send.
fn permissions(p: &Params) -> Result<Vec<PermissionSpec>> {
    let mut out = Vec::new();
    for m in p.members("IpPermissions") {
        if m.has_prefix("Ipv6Ranges") || m.has_prefix("PrefixListIds") {
            return Err(Error::new(
                ErrorKind::UnsupportedOperation,
                "IPv6 ranges and prefix lists are not supported",
            ));
        }
        let cidrs = m
            .members("IpRanges")
            .iter()
            .filter_map(|r| r.get("CidrIp").map(str::to_string))
            .collect();
        let groups = m
            .members("Groups")
            .iter()
            .map(|g| SourceGroupSpec {
                user_id: g.get("UserId").map(str::to_string),
                group_name: g.get("GroupName").map(str::to_string),
                group_id: g.get("GroupId").map(str::to_string),
            })
            .collect();
        out.push(PermissionSpec {
            protocol: m.get("IpProtocol").map(str::to_string),
            from_port: m.get("FromPort").map(str::to_string),
            to_port: m.get("ToPort").map(str::to_string),
            cidrs,
            groups,
        });
    }
    let flat_group = p.get("SourceSecurityGroupName").map(|n| SourceGroupSpec {
        user_id: p.get("SourceSecurityGroupOwnerId").map(str::to_string),
        group_name: Some(n.to_string()),
        group_id: None,
    });
    let flat_cidr = p.get("CidrIp");
    let flat_proto = p.get("IpProtocol");
    if flat_group.is_some() || flat_cidr.is_some() || flat_proto.is_some() {
        if !out.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidParameterCombination,
                "Specify either IpPermissions or the flat IpProtocol/CidrIp/SourceSecurityGroupName form, not both",
            ));
        }
        match (flat_proto, flat_group) {
            // Classic: a bare source group opens every protocol to it.
            (None, Some(g)) if flat_cidr.is_none() => {
                for (proto, from, to) in [
                    ("tcp", "0", "65535"),
                    ("udp", "0", "65535"),
                    ("icmp", "-1", "-1"),
                ] {
                    out.push(PermissionSpec {
                        protocol: Some(proto.into()),
                        from_port: Some(from.into()),
                        to_port: Some(to.into()),
                        cidrs: vec![],
                        groups: vec![g.clone()],
                    });
                }
            }
            (proto, g) => out.push(PermissionSpec {
                protocol: proto.map(str::to_string),
                from_port: p.get("FromPort").map(str::to_string),
                to_port: p.get("ToPort").map(str::to_string),
                cidrs: flat_cidr.map(|c| vec![c.to_string()]).unwrap_or_default(),
                groups: g.into_iter().collect(),
            }),
        }
    }
    Ok(out)
}

async fn describe_groups(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let groups = cloud
        .describe_security_groups(
            caller,
            &p.list("GroupName"),
            &p.list("GroupId"),
            &filters(p)?,
        )
        .await?;
    r.w.open("securityGroupInfo");
    for (g, tags) in groups {
        r.w.open("item");
        r.w.elem("ownerId", g.account_id.as_str());
        r.w.elem("groupId", g.id.as_str());
        r.w.elem("groupName", &g.name);
        r.w.elem("groupDescription", &g.description);
        r.w.open("ipPermissions");
        // EC2 shows one permission per protocol and port range, with every
        // source of that range listed under it.
        let mut by_range: BTreeMap<(Protocol, i32, i32), SourcesOf> = BTreeMap::new();
        for rule in &g.rules {
            let e = by_range
                .entry((rule.protocol, rule.from_port, rule.to_port))
                .or_default();
            match rule.source {
                RuleSource::Group { .. } => e.0.push(rule),
                RuleSource::Cidr(_) => e.1.push(rule),
            }
        }
        for ((proto, from, to), (groups, cidrs)) in by_range {
            r.w.open("item");
            r.w.elem("ipProtocol", proto.as_str());
            if proto != Protocol::All {
                r.w.elem("fromPort", &from.to_string());
                r.w.elem("toPort", &to.to_string());
            }
            r.w.open("groups");
            for rule in groups {
                if let RuleSource::Group {
                    account_id,
                    group_id,
                    group_name,
                } = &rule.source
                {
                    r.w.open("item");
                    r.w.elem("userId", account_id.as_str());
                    r.w.elem("groupId", group_id.as_str());
                    r.w.elem("groupName", group_name);
                    r.w.close("item");
                }
            }
            r.w.close("groups");
            r.w.open("ipRanges");
            for rule in cidrs {
                if let RuleSource::Cidr(c) = &rule.source {
                    r.w.open("item");
                    r.w.elem("cidrIp", &c.to_string());
                    r.w.close("item");
                }
            }
            r.w.close("ipRanges");
            r.w.empty("ipv6Ranges");
            r.w.empty("prefixListIds");
            r.w.close("item");
        }
        r.w.close("ipPermissions");
        r.w.empty("ipPermissionsEgress");
        tag_set(&mut r.w, &tags);
        r.w.close("item");
    }
    r.w.close("securityGroupInfo");
    Ok(())
}

/// The group sources and the CIDR sources of one protocol/port range.
type SourcesOf<'a> = (Vec<&'a Rule>, Vec<&'a Rule>);

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn count(p: &Params, name: &str, default: u32) -> Result<u32> {
    match p.get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                Error::invalid_value(format!(
                    "Invalid value '{v}' for {name}: a positive integer"
                ))
            }),
    }
}

async fn run_instances(cloud: &Cloud, caller: &Caller, p: &Params, r: &mut Response) -> Result<()> {
    let image_id = p.required("ImageId")?;
    let min = count(p, "MinCount", 1)?;
    let max = count(p, "MaxCount", min)?;
    if min > max {
        return Err(Error::invalid_value(format!(
            "MinCount ({min}) must not be greater than MaxCount ({max})"
        )));
    }
    // Checked before anything runs, so bad tags start nothing.
    let tags = tag_specs(p, "instance")?;
    cloud.check_new_tags(&tags)?;
    let made = cloud
        .run_instances(
            caller,
            RunRequest {
                image_id: image_id.to_string(),
                min_count: min,
                max_count: max,
                instance_type: p.get("InstanceType").map(str::to_string),
                key_name: p.get("KeyName").map(str::to_string),
                group_names: p.list("SecurityGroup"),
                group_ids: p.list("SecurityGroupId"),
                user_data: p.get("UserData").map(str::to_string),
                zone: p
                    .get("Placement.AvailabilityZone")
                    .filter(|z| !z.is_empty())
                    .map(str::to_string),
                kernel_id: p.get("KernelId").map(str::to_string),
                ramdisk_id: p.get("RamdiskId").map(str::to_string),
            },
        )
        .await?;
    if !tags.is_empty() {
        let ids: Vec<String> = made.iter().map(|i| i.id.to_string()).collect();
        cloud.create_tags(caller, &ids, &tags).await?;
    }
    let first = &made[0];
    r.w.elem("reservationId", first.reservation_id.as_str());
    r.w.elem("ownerId", first.account_id.as_str());
    group_set(&mut r.w, first);
    r.w.open("instancesSet");
    for i in &made {
        // The tags just stored, as DescribeInstances will show them (a
        // key given twice keeps its last value, as the store does).
        let stored: std::collections::BTreeMap<&String, &Option<String>> =
            tags.iter().map(|(k, v)| (k, v)).collect();
        let mine: Vec<Tag> = stored
            .into_iter()
            .map(|(k, v)| Tag {
                resource_id: i.id.to_string(),
                resource_type: ResourceType::Instance,
                key: k.clone(),
                value: v.clone().unwrap_or_default(),
            })
            .collect();
        instance_item(&mut r.w, i, &mine);
    }
    r.w.close("instancesSet");
    Ok(())
}

fn group_set(w: &mut crate::xml::Writer, i: &Instance) {
    w.open("groupSet");
    w.open("item");
    w.elem("groupId", i.group_id.as_str());
    w.elem("groupName", &i.group_name);
    w.close("item");
    w.close("groupSet");
}

fn state_elem(w: &mut crate::xml::Writer, tag: &str, s: InstanceState) {
    w.open(tag);
    w.elem("code", &s.code().to_string());
    w.elem("name", s.as_str());
    w.close(tag);
}

fn instance_item(w: &mut crate::xml::Writer, i: &Instance, tags: &[Tag]) {
    w.open("item");
    w.elem("instanceId", i.id.as_str());
    w.elem("imageId", i.image_id.as_str());
    state_elem(w, "instanceState", i.state);
    let live = i.state != InstanceState::Terminated;
    let private_dns = format!("ip-{}.{}.internal", i.private_ip.replace('.', "-"), i.zone);
    w.elem("privateDnsName", if live { &private_dns } else { "" });
    w.elem(
        "dnsName",
        i.public_ip.as_deref().filter(|_| live).unwrap_or(""),
    );
    w.elem("reason", i.state_reason.as_deref().unwrap_or(""));
    if let Some(k) = &i.key_name {
        w.elem("keyName", k);
    }
    w.elem("amiLaunchIndex", &i.launch_index.to_string());
    w.empty("productCodes");
    w.elem("instanceType", &i.instance_type);
    w.elem("launchTime", &iso8601_ms(i.launch_ms));
    w.open("placement");
    w.elem("availabilityZone", &i.zone);
    w.empty("groupName");
    w.elem("tenancy", "default");
    w.close("placement");
    if let Some(k) = &i.kernel_id {
        w.elem("kernelId", k.as_str());
    }
    if let Some(k) = &i.ramdisk_id {
        w.elem("ramdiskId", k.as_str());
    }
    w.open("monitoring");
    w.elem("state", "disabled");
    w.close("monitoring");
    if live {
        w.elem("privateIpAddress", &i.private_ip);
        if let Some(ip) = &i.public_ip {
            w.elem("ipAddress", ip);
        }
    }
    group_set(w, i);
    if let Some(reason) = &i.state_reason {
        let (code, msg) = reason
            .split_once(": ")
            .unwrap_or((reason.as_str(), reason.as_str()));
        w.open("stateReason");
        w.elem("code", code);
        w.elem("message", msg);
        w.close("stateReason");
    }
    w.elem("architecture", "x86_64");
    w.elem("rootDeviceType", "instance-store");
    w.empty("blockDeviceMapping");
    w.elem("virtualizationType", "paravirtual");
    tag_set(w, tags);
    w.elem("hypervisor", "kvm");
    w.close("item");
}

async fn describe_instances(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let found = cloud
        .describe_instances(caller, &p.list("InstanceId"), &filters(p)?)
        .await?;
    // One reservation element per reservation, in launch order.
    let mut order: Vec<ReservationId> = Vec::new();
    for (i, _) in &found {
        if !order.contains(&i.reservation_id) {
            order.push(i.reservation_id.clone());
        }
    }
    r.w.open("reservationSet");
    for res in order {
        let members: Vec<&(Instance, Vec<Tag>)> = found
            .iter()
            .filter(|(i, _)| i.reservation_id == res)
            .collect();
        let first = &members[0].0;
        r.w.open("item");
        r.w.elem("reservationId", res.as_str());
        r.w.elem("ownerId", first.account_id.as_str());
        group_set(&mut r.w, first);
        r.w.open("instancesSet");
        for (i, tags) in members {
            instance_item(&mut r.w, i, tags);
        }
        r.w.close("instancesSet");
        r.w.close("item");
    }
    r.w.close("reservationSet");
    Ok(())
}

async fn terminate_instances(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let changes = cloud
        .terminate_instances(caller, &p.list("InstanceId"))
        .await?;
    r.w.open("instancesSet");
    for c in changes {
        r.w.open("item");
        r.w.elem("instanceId", c.id.as_str());
        state_elem(&mut r.w, "currentState", c.current);
        state_elem(&mut r.w, "previousState", c.previous);
        r.w.close("item");
    }
    r.w.close("instancesSet");
    Ok(())
}

async fn describe_instance_status(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let all = p
        .get("IncludeAllInstances")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let found = cloud
        .describe_instances(caller, &p.list("InstanceId"), &[])
        .await?;
    r.w.open("instanceStatusSet");
    for (i, _) in found {
        if !all && i.state != InstanceState::Running {
            continue;
        }
        r.w.open("item");
        r.w.elem("instanceId", i.id.as_str());
        r.w.elem("availabilityZone", &i.zone);
        state_elem(&mut r.w, "instanceState", i.state);
        let status = if i.state == InstanceState::Running {
            "ok"
        } else {
            "not-applicable"
        };
        for tag in ["systemStatus", "instanceStatus"] {
            r.w.open(tag);
            r.w.elem("status", status);
            r.w.open("details");
            r.w.open("item");
            r.w.elem("name", "reachability");
            r.w.elem(
                "status",
                if status == "ok" {
                    "passed"
                } else {
                    "initializing"
                },
            );
            r.w.close("item");
            r.w.close("details");
            r.w.close(tag);
        }
        r.w.close("item");
    }
    r.w.close("instanceStatusSet");
    Ok(())
}

async fn register_image(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let location = p.required("ImageLocation")?;
    // Older tools register by location alone; the name defaults to it, as
    // Eucalyptus did.
    let name = p
        .get("Name")
        .map(str::to_string)
        .unwrap_or_else(|| location.rsplit('/').next().unwrap_or(location).to_string());
    let id = cloud
        .register_image(
            caller,
            RegisterImage {
                location: location.to_string(),
                name,
                description: p.get("Description").map(str::to_string),
                kernel_id: p.get("KernelId").map(str::to_string),
                ramdisk_id: p.get("RamdiskId").map(str::to_string),
                architecture: p.get("Architecture").map(str::to_string),
                kind: None,
            },
        )
        .await?;
    r.w.elem("imageId", id.as_str());
    Ok(())
}

async fn describe_images(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let images = cloud
        .describe_images(
            caller,
            &p.list("ImageId"),
            &p.list("Owner"),
            &p.list("ExecutableBy"),
            &filters(p)?,
        )
        .await?;
    r.w.open("imagesSet");
    for (i, tags) in images {
        r.w.open("item");
        r.w.elem("imageId", i.id.as_str());
        r.w.elem("imageLocation", &i.location);
        r.w.elem("imageState", "available");
        r.w.elem("imageOwnerId", i.account_id.as_str());
        r.w.elem("creationDate", &iso8601_ms(i.created_ms));
        r.w.elem("isPublic", if i.public { "true" } else { "false" });
        r.w.elem("architecture", &i.architecture);
        r.w.elem("imageType", i.id.kind().as_str());
        if let Some(k) = &i.kernel_id {
            r.w.elem("kernelId", k.as_str());
        }
        if let Some(k) = &i.ramdisk_id {
            r.w.elem("ramdiskId", k.as_str());
        }
        r.w.elem("name", &i.name);
        if !i.description.is_empty() {
            r.w.elem("description", &i.description);
        }
        r.w.elem("rootDeviceType", "instance-store");
        r.w.empty("blockDeviceMapping");
        r.w.elem("virtualizationType", "paravirtual");
        tag_set(&mut r.w, &tags);
        r.w.elem("hypervisor", "kvm");
        r.w.close("item");
    }
    r.w.close("imagesSet");
    Ok(())
}

async fn describe_image_attribute(
    cloud: &Cloud,
    caller: &Caller,
    p: &Params,
    r: &mut Response,
) -> Result<()> {
    let id = p.required("ImageId")?;
    let attr = p.required("Attribute")?;
    let img = cloud.image_for_attribute(caller, id).await?;
    r.w.elem("imageId", img.id.as_str());
    match attr {
        "launchPermission" => {
            r.w.open("launchPermission");
            if img.public {
                r.w.open("item");
                r.w.elem("group", "all");
                r.w.close("item");
            }
            for a in &img.launch_permissions {
                r.w.open("item");
                r.w.elem("userId", a.as_str());
                r.w.close("item");
            }
            r.w.close("launchPermission");
        }
        "description" => {
            r.w.open("description");
            r.w.elem("value", &img.description);
            r.w.close("description");
        }
        "kernel" => {
            r.w.open("kernel");
            if let Some(k) = &img.kernel_id {
                r.w.elem("value", k.as_str());
            }
            r.w.close("kernel");
        }
        "ramdisk" => {
            r.w.open("ramdisk");
            if let Some(k) = &img.ramdisk_id {
                r.w.elem("value", k.as_str());
            }
            r.w.close("ramdisk");
        }
        "productCodes" => r.w.empty("productCodes"),
        "blockDeviceMapping" => r.w.empty("blockDeviceMapping"),
        other => {
            return Err(Error::invalid_value(format!(
                "Invalid value '{other}' for Attribute"
            )));
        }
    }
    Ok(())
}

/// Both forms EC2 has taken: `LaunchPermission.Add.N.UserId|Group` and the
/// classic `Attribute=launchPermission&OperationType=add&UserId.N&UserGroup.N`.
async fn modify_image_attribute(cloud: &Cloud, caller: &Caller, p: &Params) -> Result<()> {
    let id = p.required("ImageId")?;
    let mut change = LaunchPermissionChange::default();
    let mut any = false;
    for (which, add) in [
        ("LaunchPermission.Add", true),
        ("LaunchPermission.Remove", false),
    ] {
        for m in p.members(which) {
            any = true;
            if let Some(u) = m.get("UserId") {
                if add {
                    change.add_accounts.push(u.to_string());
                } else {
                    change.remove_accounts.push(u.to_string());
                }
            }
            if let Some(g) = m.get("Group") {
                if g != "all" {
                    return Err(Error::invalid_value(format!(
                        "Invalid value '{g}' for Group"
                    )));
                }
                if add {
                    change.add_all = true;
                } else {
                    change.remove_all = true;
                }
            }
        }
    }
    match p.get("Attribute") {
        Some("launchPermission") => {
            let add = match p.get("OperationType") {
                Some("add") => true,
                Some("remove") => false,
                _ => return Err(Error::missing("OperationType")),
            };
            any = true;
            for u in p.list("UserId") {
                if add {
                    change.add_accounts.push(u);
                } else {
                    change.remove_accounts.push(u);
                }
            }
            for g in p.list("UserGroup") {
                if g != "all" {
                    return Err(Error::invalid_value(format!(
                        "Invalid value '{g}' for UserGroup"
                    )));
                }
                if add {
                    change.add_all = true;
                } else {
                    change.remove_all = true;
                }
            }
        }
        Some("description") => {
            let v = p.get("Value").or(p.get("Description.Value")).unwrap_or("");
            return cloud.set_image_description(caller, id, v).await;
        }
        Some(other) => {
            return Err(Error::invalid_value(format!(
                "Invalid value '{other}' for Attribute"
            )));
        }
        None => {}
    }
    if let Some(d) = p.get("Description.Value") {
        cloud.set_image_description(caller, id, d).await?;
        if !any {
            return Ok(());
        }
    }
    if !any {
        return Err(Error::missing("LaunchPermission or Description"));
    }
    cloud.modify_image_launch(caller, id, &change).await
}

/// `TagSpecification.N`: tags to put on the resource a Create call makes.
/// Only the resource type the call creates is allowed.
fn tag_specs(p: &Params, resource_type: &str) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    for spec in p.members("TagSpecification") {
        match spec.get("ResourceType") {
            Some(t) if t == resource_type => {}
            other => {
                return Err(Error::invalid_value(format!(
                    "'{}' is not a valid taggable resource type for this operation; use '{resource_type}'",
                    other.unwrap_or("")
                )));
            }
        }
        out.extend(tag_pairs(&spec));
    }
    Ok(out)
}

fn tag_pairs(p: &Params) -> Vec<(String, Option<String>)> {
    p.members("Tag")
        .into_iter()
        .filter_map(|m| {
            m.get("Key")
                .map(|k| (k.to_string(), m.get("Value").map(str::to_string)))
        })
        .collect()
}

async fn describe_tags(cloud: &Cloud, caller: &Caller, p: &Params, r: &mut Response) -> Result<()> {
    let tags = cloud.describe_tags(caller, &filters(p)?).await?;
    r.w.open("tagSet");
    for t in tags {
        r.w.open("item");
        r.w.elem("resourceId", &t.resource_id);
        r.w.elem("resourceType", t.resource_type.as_str());
        r.w.elem("key", &t.key);
        r.w.elem("value", &t.value);
        r.w.close("item");
    }
    r.w.close("tagSet");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::parse_form;
    use ironbark_clc::{CloudConfig, NoCapacity};
    use ironbark_keypair::SealKey;
    use ironbark_store::SqliteStore;

    async fn setup() -> (Cloud, Caller) {
        let cloud = Cloud::new(
            Arc::new(SqliteStore::in_memory().await.unwrap()),
            SealKey::generate(),
            CloudConfig::new("/nonexistent", "http://127.0.0.1:8773/"),
            Arc::new(NoCapacity),
        );
        let creds = cloud.create_account("alice").await.unwrap();
        let account = cloud
            .store()
            .account_by_id(&creds.account_id)
            .await
            .unwrap()
            .unwrap();
        let caller = Caller {
            account,
            user_name: "admin".into(),
            access_key_id: creds.access_key_id,
        };
        (cloud, caller)
    }

    async fn call(c: &Cloud, who: &Caller, q: &str) -> Result<String> {
        handle(c, who, &Params::new(parse_form(q.as_bytes())), "req-1").await
    }

    #[tokio::test]
    async fn responses_are_namespaced_by_version_with_request_id() {
        let (c, a) = setup().await;
        let x = call(&c, &a, "Action=DescribeRegions&Version=2014-06-15")
            .await
            .unwrap();
        assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeRegionsResponse xmlns=\"http://ec2.amazonaws.com/doc/2014-06-15/\"><requestId>req-1</requestId><regionInfo><item><regionName>eucalyptus</regionName>"));
        let e = call(&c, &a, "Action=DescribeRegions&Version=2009-01-01")
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidParameterValue);
        let e = call(&c, &a, "Action=Nope&Version=2016-11-15")
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidAction);
        let e = call(&c, &a, "Version=2016-11-15").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::MissingAction);
    }

    #[tokio::test]
    async fn legacy_flat_and_structured_permissions_render_grouped() {
        let (c, a) = setup().await;
        call(
            &c,
            &a,
            "Action=CreateSecurityGroup&Version=2016-11-15&GroupName=web&GroupDescription=w",
        )
        .await
        .unwrap();
        call(&c, &a, "Action=AuthorizeSecurityGroupIngress&Version=2010-08-31&GroupName=web&IpProtocol=tcp&FromPort=22&ToPort=22&CidrIp=0.0.0.0/0").await.unwrap();
        call(&c, &a, "Action=AuthorizeSecurityGroupIngress&Version=2016-11-15&GroupName=web&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=22&IpPermissions.1.ToPort=22&IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0/8&IpPermissions.1.Groups.1.GroupName=default").await.unwrap();
        // Bare source group (classic): tcp, udp and icmp from it.
        call(&c, &a, "Action=AuthorizeSecurityGroupIngress&Version=2010-08-31&GroupName=web&SourceSecurityGroupName=web").await.unwrap();
        let e = call(&c, &a, "Action=AuthorizeSecurityGroupIngress&Version=2010-08-31&GroupName=web&IpProtocol=tcp&FromPort=22&ToPort=22&CidrIp=0.0.0.0/0").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::PermissionDuplicate);
        let x = call(
            &c,
            &a,
            "Action=DescribeSecurityGroups&Version=2016-11-15&GroupName.1=web",
        )
        .await
        .unwrap();
        let tcp22 = "<item><ipProtocol>tcp</ipProtocol><fromPort>22</fromPort><toPort>22</toPort><groups><item>";
        assert!(x.contains(tcp22), "{x}");
        assert!(x.contains("<ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item><item><cidrIp>10.0.0.0/8</cidrIp></item></ipRanges>"), "{x}");
        assert!(
            x.contains("<ipProtocol>udp</ipProtocol><fromPort>0</fromPort><toPort>65535</toPort>"),
            "{x}"
        );
        assert!(
            x.contains("<ipProtocol>icmp</ipProtocol><fromPort>-1</fromPort><toPort>-1</toPort>"),
            "{x}"
        );
    }

    #[tokio::test]
    async fn tag_specifications_tag_what_is_created_or_create_nothing() {
        let (c, a) = setup().await;
        let x = call(&c, &a, "Action=CreateSecurityGroup&Version=2016-11-15&GroupName=t&GroupDescription=d&TagSpecification.1.ResourceType=security-group&TagSpecification.1.Tag.1.Key=env&TagSpecification.1.Tag.1.Value=prod").await.unwrap();
        assert!(x.contains("<groupId>sg-"));
        let d = call(
            &c,
            &a,
            "Action=DescribeSecurityGroups&Version=2016-11-15&GroupName.1=t",
        )
        .await
        .unwrap();
        assert!(
            d.contains("<tagSet><item><key>env</key><value>prod</value></item></tagSet>"),
            "{d}"
        );
        let e = call(&c, &a, "Action=CreateSecurityGroup&Version=2016-11-15&GroupName=u&GroupDescription=d&TagSpecification.1.ResourceType=security-group&TagSpecification.1.Tag.1.Key=aws:x&TagSpecification.1.Tag.1.Value=v").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidParameterValue);
        let e = call(
            &c,
            &a,
            "Action=DescribeSecurityGroups&Version=2016-11-15&GroupName.1=u",
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::GroupNotFound,
            "a refused create leaves nothing behind"
        );
        call(&c, &a, "Action=CreateKeyPair&Version=2016-11-15&KeyName=k&KeyType=ed25519&TagSpecification.1.ResourceType=key-pair&TagSpecification.1.Tag.1.Key=a&TagSpecification.1.Tag.1.Value=b").await.unwrap();
        let d = call(
            &c,
            &a,
            "Action=DescribeKeyPairs&Version=2016-11-15&IncludePublicKey=true",
        )
        .await
        .unwrap();
        assert!(d.contains("<key>a</key><value>b</value>"), "{d}");
        assert!(d.contains("<publicKey>ssh-ed25519 "), "{d}");
    }

    #[test]
    fn error_document_shape() {
        let e = Error::new(
            ErrorKind::GroupNotFound,
            "The security group 'x' does not exist",
        );
        assert_eq!(
            crate::render_error(&e, "r-9"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>InvalidGroup.NotFound</Code><Message>The security group &apos;x&apos; does not exist</Message></Error></Errors><RequestID>r-9</RequestID></Response>"
        );
    }
}
