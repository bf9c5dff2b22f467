//! The behaviour every [`Store`] backend must show, written once and run
//! against each backend's own test (SQLite today, PostgreSQL later). It
//! panics on the first divergence, naming the contract that broke.

use ironbark_types::*;

use crate::{AddressChange, Store, StoredAccessKey, TagSelector};

fn account(name: &str) -> (Account, User, StoredAccessKey) {
    let a = Account {
        id: AccountId::generate(),
        name: name.to_string(),
        created_ms: now_ms(),
    };
    let u = User {
        account_id: a.id.clone(),
        name: ACCOUNT_ADMIN_USER.to_string(),
        created_ms: now_ms(),
    };
    let k = StoredAccessKey {
        id: AccessKeyId::generate(),
        account_id: a.id.clone(),
        user_name: u.name.clone(),
        sealed_secret: "sealed".into(),
        active: true,
        created_ms: now_ms(),
    };
    (a, u, k)
}

fn group(acct: &AccountId, name: &str) -> SecurityGroup {
    SecurityGroup {
        id: SecurityGroupId::generate(),
        account_id: acct.clone(),
        name: name.into(),
        description: format!("{name} group"),
        rules: vec![],
        created_ms: now_ms(),
    }
}

fn tcp(port: i32, cidr: &str) -> Rule {
    Rule {
        protocol: Protocol::Tcp,
        from_port: port,
        to_port: port,
        source: RuleSource::Cidr(cidr.parse().unwrap()),
    }
}

/// Runs every contract against a fresh, empty store.
pub async fn run_all(s: &dyn Store) {
    accounts(s).await;
    key_pairs(s).await;
    groups_and_rules(s).await;
    tags(s).await;
    images(s).await;
    instances(s).await;
    addresses(s).await;
    volumes_and_snapshots(s).await;
    properties(s).await;
}

async fn volumes_and_snapshots(s: &dyn Store) {
    let a = s.account_by_name("alpha").await.unwrap().unwrap();
    let mut v = Volume {
        id: VolumeId::generate(),
        account_id: a.id.clone(),
        size_gib: 2,
        snapshot_id: None,
        zone: "zone1".into(),
        state: VolumeState::Creating,
        error: None,
        created_ms: 5,
        attachment: None,
    };
    s.put_volume(&v).await.unwrap();
    assert_eq!(s.list_volumes(Some(&a.id)).await.unwrap(), vec![v.clone()]);
    // Volumes take tags, which read back with their type and go with them.
    s.put_tags(
        &a.id,
        &[(v.id.to_string(), ResourceType::Volume)],
        &[("Name".into(), "data".into())],
    )
    .await
    .unwrap();
    let tags = s.list_tags(Some(&a.id)).await.unwrap();
    assert!(
        tags.iter()
            .any(|t| t.resource_id == v.id.as_str() && t.resource_type == ResourceType::Volume)
    );
    v.state = VolumeState::Available;
    v.attachment = Some(VolumeAttachment {
        instance_id: InstanceId::generate(),
        device: "/dev/sdb".into(),
        state: AttachState::Attaching,
        attach_ms: 6,
        force_detach: true,
    });
    s.put_volume(&v).await.unwrap();
    assert_eq!(s.list_volumes(None).await.unwrap(), vec![v.clone()]);
    assert_eq!(v.api_state(), "in-use");
    assert!(
        s.list_volumes(Some(&AccountId::generate()))
            .await
            .unwrap()
            .is_empty()
    );

    let mut sn = Snapshot {
        id: SnapshotId::generate(),
        account_id: a.id.clone(),
        volume_id: v.id.clone(),
        volume_size_gib: 2,
        description: "nightly".into(),
        state: SnapshotState::Pending,
        progress: 0,
        started_ms: 7,
        location: "ironbark-snapshots/snap.gz".into(),
        compression: "gzip".into(),
        sha256: None,
        raw_digest: None,
        error: None,
        upload_id: Some("up1".into()),
        answered: false,
        public: false,
        shared_with: vec![],
    };
    s.put_snapshot(&sn).await.unwrap();
    assert_eq!(s.list_snapshots().await.unwrap(), vec![sn.clone()]);
    sn.answered = true;
    s.put_snapshot(&sn).await.unwrap();
    assert_eq!(s.list_snapshots().await.unwrap(), vec![sn.clone()]);
    sn.upload_id = None;
    sn.state = SnapshotState::Completed;
    sn.progress = 100;
    sn.sha256 = Some("ab".into());
    sn.raw_digest = Some("cd".into());
    sn.shared_with = vec![AccountId::generate(), AccountId::generate()];
    s.put_snapshot(&sn).await.unwrap();
    assert_eq!(s.list_snapshots().await.unwrap(), vec![sn.clone()]);
    assert!(s.delete_snapshot(&sn.id).await.unwrap());
    assert!(!s.delete_snapshot(&sn.id).await.unwrap());
    assert!(s.delete_volume(&v.id).await.unwrap());
    assert!(s.list_volumes(None).await.unwrap().is_empty());
    assert!(
        !s.list_tags(Some(&a.id))
            .await
            .unwrap()
            .iter()
            .any(|t| t.resource_id == v.id.as_str())
    );
}

async fn addresses(s: &dyn Store) {
    let a = s.account_by_name("alpha").await.unwrap().unwrap();
    let g = s.group_by_name(&a.id, "db").await.unwrap().unwrap();
    let i = Instance {
        id: InstanceId::generate(),
        reservation_id: ReservationId::generate(),
        account_id: a.id.clone(),
        image_id: ImageId::generate(ImageKind::Machine),
        kernel_id: None,
        ramdisk_id: None,
        instance_type: "m1.small".into(),
        key_name: None,
        group_id: g.id.clone(),
        group_name: g.name.clone(),
        user_data: None,
        zone: "zone1".into(),
        node_id: "node-1".into(),
        private_ip: "10.0.0.9".into(),
        mac: "d0:0d:00:00:00:09".into(),
        public_ip: Some("203.0.113.1".into()),
        state: InstanceState::Running,
        state_reason: None,
        launch_index: 0,
        launch_ms: 1,
        terminated_ms: None,
    };
    s.insert_instances(std::slice::from_ref(&i)).await.unwrap();
    let eip = Address {
        public_ip: "203.0.113.7".into(),
        allocation_id: AllocationId::generate(),
        account_id: a.id.clone(),
        instance_id: None,
        association_id: None,
        restore_ip: None,
        allocated_ms: 9,
    };
    s.insert_address(&eip).await.unwrap();
    let again = Address {
        allocation_id: AllocationId::generate(),
        ..eip.clone()
    };
    assert_eq!(
        s.insert_address(&again).await.unwrap_err().kind,
        ErrorKind::InsufficientAddressCapacity
    );
    assert_eq!(
        s.list_addresses(Some(&a.id)).await.unwrap(),
        vec![eip.clone()]
    );
    assert!(
        s.list_addresses(Some(&AccountId::generate()))
            .await
            .unwrap()
            .is_empty()
    );

    // Association: the row and the instance's public IP move together.
    let assoc = Address {
        instance_id: Some(i.id.clone()),
        association_id: Some(AssociationId::generate()),
        restore_ip: Some("203.0.113.1".into()),
        ..eip.clone()
    };
    s.write_addresses(&AddressChange {
        update: vec![assoc.clone()],
        delete: vec![],
        instance_ips: vec![(i.id.clone(), Some(eip.public_ip.clone()))],
    })
    .await
    .unwrap();
    assert_eq!(s.list_addresses(None).await.unwrap(), vec![assoc.clone()]);
    assert_eq!(
        s.instance(&i.id)
            .await
            .unwrap()
            .unwrap()
            .public_ip
            .as_deref(),
        Some("203.0.113.7")
    );

    // A change naming a row that does not exist changes nothing.
    let ghost = Address {
        public_ip: "203.0.113.99".into(),
        ..eip.clone()
    };
    assert!(
        s.write_addresses(&AddressChange {
            update: vec![ghost],
            delete: vec![],
            instance_ips: vec![(i.id.clone(), None)],
        })
        .await
        .is_err()
    );
    assert_eq!(
        s.instance(&i.id)
            .await
            .unwrap()
            .unwrap()
            .public_ip
            .as_deref(),
        Some("203.0.113.7")
    );

    // Release: the row goes, the instance gets its earlier address back.
    s.write_addresses(&AddressChange {
        update: vec![],
        delete: vec![eip.public_ip.clone()],
        instance_ips: vec![(i.id.clone(), Some("203.0.113.1".into()))],
    })
    .await
    .unwrap();
    assert!(s.list_addresses(None).await.unwrap().is_empty());
    assert_eq!(
        s.instance(&i.id)
            .await
            .unwrap()
            .unwrap()
            .public_ip
            .as_deref(),
        Some("203.0.113.1")
    );
}

async fn instances(s: &dyn Store) {
    let a = s.account_by_name("alpha").await.unwrap().unwrap();
    let g = s.group_by_name(&a.id, "db").await.unwrap().unwrap();
    let r = ReservationId::generate();
    let mk = |n: u32| Instance {
        id: InstanceId::generate(),
        reservation_id: r.clone(),
        account_id: a.id.clone(),
        image_id: ImageId::generate(ImageKind::Machine),
        kernel_id: Some(ImageId::generate(ImageKind::Kernel)),
        ramdisk_id: None,
        instance_type: "m1.small".into(),
        key_name: Some("k".into()),
        group_id: g.id.clone(),
        group_name: g.name.clone(),
        user_data: Some("aGk=".into()),
        zone: "zone1".into(),
        node_id: "node-1".into(),
        private_ip: format!("10.0.0.{}", n + 2),
        mac: format!("d0:0d:00:00:00:0{n}"),
        public_ip: None,
        state: InstanceState::Pending,
        state_reason: None,
        launch_index: n,
        launch_ms: 100,
        terminated_ms: None,
    };
    let (i0, i1) = (mk(0), mk(1));
    s.insert_instances(&[i0.clone(), i1.clone()]).await.unwrap();
    assert_eq!(s.instance(&i0.id).await.unwrap().unwrap(), i0);
    assert_eq!(s.list_instances(Some(&a.id)).await.unwrap().len(), 2);
    assert!(
        s.list_instances(Some(&AccountId::generate()))
            .await
            .unwrap()
            .is_empty()
    );

    // Compare-and-set: only from the expected states.
    let up = s
        .transition_instance(
            &i0.id,
            &[InstanceState::Pending],
            InstanceState::Running,
            None,
            5,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(up.state, InstanceState::Running);
    assert!(
        s.transition_instance(
            &i0.id,
            &[InstanceState::Pending],
            InstanceState::Running,
            None,
            5
        )
        .await
        .unwrap()
        .is_none()
    );
    let t = s
        .transition_instance(
            &i1.id,
            &[InstanceState::Pending, InstanceState::Running],
            InstanceState::Terminated,
            Some("gone"),
            77,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.terminated_ms, Some(77));
    assert_eq!(t.state_reason.as_deref(), Some("gone"));
    assert!(s.delete_instance(&i1.id).await.unwrap());
    assert!(s.instance(&i1.id).await.unwrap().is_none());

    // Segments: stable per group, lowest free index, bounded.
    let g2 = SecurityGroupId::generate();
    assert_eq!(s.segment_of(&g.id, 2).await.unwrap(), 0);
    assert_eq!(s.segment_of(&g.id, 2).await.unwrap(), 0);
    assert_eq!(s.segment_of(&g2, 2).await.unwrap(), 1);
    assert_eq!(
        s.segment_of(&SecurityGroupId::generate(), 2)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::InsufficientInstanceCapacity
    );
    s.release_segment(&g.id).await.unwrap();
    assert_eq!(s.segments().await.unwrap(), vec![(g2.clone(), 1)]);
    s.release_segment(&g2).await.unwrap();
    assert!(s.delete_instance(&i0.id).await.unwrap());
}

async fn images(s: &dyn Store) {
    let a = s.account_by_name("alpha").await.unwrap().unwrap();
    let other = AccountId::generate();
    let k = Image {
        id: ImageId::generate(ImageKind::Kernel),
        account_id: a.id.clone(),
        name: "kernel".into(),
        description: "k".into(),
        location: "b/vmlinuz".into(),
        size: 10,
        sha256: "ab".repeat(32),
        kernel_id: None,
        ramdisk_id: None,
        architecture: "x86_64".into(),
        public: false,
        launch_permissions: vec![other.clone()],
        created_ms: 1,
    };
    s.insert_image(&k).await.unwrap();
    let m = Image {
        id: ImageId::generate(ImageKind::Machine),
        name: "machine".into(),
        kernel_id: Some(k.id.clone()),
        launch_permissions: vec![],
        ..k.clone()
    };
    s.insert_image(&m).await.unwrap();
    let dup = Image {
        id: ImageId::generate(ImageKind::Machine),
        ..m.clone()
    };
    assert_eq!(
        s.insert_image(&dup).await.unwrap_err().kind,
        ErrorKind::ImageNameDuplicate
    );
    assert_eq!(s.image(&k.id).await.unwrap().unwrap(), k);
    assert_eq!(
        s.image(&m.id).await.unwrap().unwrap().kernel_id,
        Some(k.id.clone())
    );
    assert_eq!(s.list_images().await.unwrap().len(), 2);

    s.set_image_launch(&m.id, true, std::slice::from_ref(&other))
        .await
        .unwrap();
    let got = s.image(&m.id).await.unwrap().unwrap();
    assert!(got.public && got.launch_permissions == vec![other.clone()]);
    s.set_image_description(&m.id, "new").await.unwrap();
    assert_eq!(s.image(&m.id).await.unwrap().unwrap().description, "new");
    s.put_tags(
        &a.id,
        &[(m.id.to_string(), ResourceType::Image)],
        &[("k".into(), "v".into())],
    )
    .await
    .unwrap();
    assert!(s.delete_image(&m.id).await.unwrap());
    assert!(!s.delete_image(&m.id).await.unwrap());
    assert!(
        s.list_tags(Some(&a.id)).await.unwrap().is_empty(),
        "tags go with the image"
    );
    assert_eq!(
        s.set_image_launch(&m.id, false, &[])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::ImageNotFound
    );
    assert!(s.delete_image(&k.id).await.unwrap());
}

async fn accounts(s: &dyn Store) {
    let (a, u, k) = account("alpha");
    s.create_account(&a, &u, &k).await.unwrap();
    let (mut a2, u2, k2) = account("alpha");
    a2.created_ms += 1;
    let e = s.create_account(&a2, &u2, &k2).await.unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::AccountDuplicate,
        "duplicate account name"
    );
    assert!(
        s.access_key(&k2.id).await.unwrap().is_none(),
        "failed create leaves no key"
    );
    assert_eq!(s.account_by_name("alpha").await.unwrap().unwrap(), a);
    assert_eq!(s.account_by_id(&a.id).await.unwrap().unwrap(), a);
    assert!(s.account_by_name("nope").await.unwrap().is_none());
    assert_eq!(s.access_key(&k.id).await.unwrap().unwrap(), k);

    let more = StoredAccessKey {
        id: AccessKeyId::generate(),
        ..k.clone()
    };
    s.insert_access_key(&more).await.unwrap();
    assert_eq!(s.list_access_keys(&a.id).await.unwrap().len(), 2);
    let e = s.insert_access_key(&more).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::AccessKeyDuplicate);
    let ghost = StoredAccessKey {
        id: AccessKeyId::generate(),
        user_name: "ghost".into(),
        ..k.clone()
    };
    assert_eq!(
        s.insert_access_key(&ghost).await.unwrap_err().kind,
        ErrorKind::UserNotFound
    );
    s.delete_access_key(&more.id).await.unwrap();
    assert_eq!(
        s.delete_access_key(&more.id).await.unwrap_err().kind,
        ErrorKind::AccessKeyNotFound
    );

    s.create_user(&User {
        account_id: a.id.clone(),
        name: "bob".into(),
        created_ms: 1,
    })
    .await
    .unwrap();
    assert_eq!(
        s.create_user(&User {
            account_id: a.id.clone(),
            name: "bob".into(),
            created_ms: 1,
        })
        .await
        .unwrap_err()
        .kind,
        ErrorKind::UserDuplicate
    );
    assert_eq!(s.list_users(&a.id).await.unwrap().len(), 2);

    // Deleting an account removes what it owns, and is refused while
    // another account's rules depend on its groups.
    let (b, ub, kb) = account("beta");
    s.create_account(&b, &ub, &kb).await.unwrap();
    let gb = group(&b.id, "web");
    s.insert_group(&gb).await.unwrap();
    let ga = group(&a.id, "app");
    s.insert_group(&ga).await.unwrap();
    let from_b = Rule {
        protocol: Protocol::Tcp,
        from_port: 80,
        to_port: 80,
        source: RuleSource::Group {
            account_id: b.id.clone(),
            group_id: gb.id.clone(),
            group_name: "web".into(),
        },
    };
    s.add_rules(&ga.id, std::slice::from_ref(&from_b))
        .await
        .unwrap();
    assert_eq!(
        s.delete_account(&b.id).await.unwrap_err().kind,
        ErrorKind::DeleteConflict
    );
    s.remove_rules(&ga.id, &[from_b]).await.unwrap();
    s.delete_account(&b.id).await.unwrap();
    assert!(s.account_by_id(&b.id).await.unwrap().is_none());
    assert!(s.group_by_id(&gb.id).await.unwrap().is_none());
    assert!(s.access_key(&kb.id).await.unwrap().is_none());
    s.delete_group(&ga.id).await.unwrap();
    assert_eq!(s.list_accounts().await.unwrap().len(), 1);
}

async fn key_pairs(s: &dyn Store) {
    let a = s.account_by_name("alpha").await.unwrap().unwrap();
    let kp = KeyPair {
        id: KeyPairId::generate(),
        account_id: a.id.clone(),
        name: "mykey".into(),
        fingerprint: "aa:bb".into(),
        key_type: "rsa".into(),
        public_key: "ssh-rsa AAAA".into(),
        created_ms: 5,
    };
    s.insert_key_pair(&kp).await.unwrap();
    let dup = KeyPair {
        id: KeyPairId::generate(),
        ..kp.clone()
    };
    assert_eq!(
        s.insert_key_pair(&dup).await.unwrap_err().kind,
        ErrorKind::KeyPairDuplicate
    );
    assert_eq!(
        s.list_key_pairs(Some(&a.id)).await.unwrap(),
        vec![kp.clone()]
    );
    assert_eq!(s.list_key_pairs(None).await.unwrap().len(), 1);
    assert_eq!(
        s.key_pair_named(&a.id, "mykey").await.unwrap(),
        Some(kp.clone())
    );
    assert!(s.key_pair_named(&a.id, "other").await.unwrap().is_none());
    assert!(
        s.list_key_pairs(Some(&AccountId::generate()))
            .await
            .unwrap()
            .is_empty()
    );
    s.put_tags(
        &a.id,
        &[(kp.id.to_string(), ResourceType::KeyPair)],
        &[("k".into(), "v".into())],
    )
    .await
    .unwrap();
    assert!(s.delete_key_pair(&a.id, "mykey").await.unwrap());
    assert!(!s.delete_key_pair(&a.id, "mykey").await.unwrap());
    assert!(
        s.list_tags(Some(&a.id)).await.unwrap().is_empty(),
        "tags go with the key"
    );
}

async fn groups_and_rules(s: &dyn Store) {
    let a = s.account_by_name("alpha").await.unwrap().unwrap();
    let mut web = group(&a.id, "web");
    web.rules = vec![tcp(22, "10.0.0.0/8")];
    s.insert_group(&web).await.unwrap();
    let again = group(&a.id, "web");
    assert_eq!(
        s.insert_group(&again).await.unwrap_err().kind,
        ErrorKind::GroupDuplicate
    );
    let db_group = group(&a.id, "db");
    s.insert_group(&db_group).await.unwrap();

    // Add is all or nothing.
    let e = s
        .add_rules(&web.id, &[tcp(80, "0.0.0.0/0"), tcp(22, "10.0.0.0/8")])
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDuplicate);
    assert_eq!(
        s.group_by_id(&web.id).await.unwrap().unwrap().rules.len(),
        1
    );

    let from_web = Rule {
        protocol: Protocol::Tcp,
        from_port: 5432,
        to_port: 5432,
        source: RuleSource::Group {
            account_id: a.id.clone(),
            group_id: web.id.clone(),
            group_name: "web".into(),
        },
    };
    s.add_rules(&db_group.id, std::slice::from_ref(&from_web))
        .await
        .unwrap();
    let got = s.group_by_name(&a.id, "db").await.unwrap().unwrap();
    assert_eq!(
        got.rules,
        vec![from_web.clone()],
        "source group resolved with owner and name"
    );

    let missing_src = Rule {
        source: RuleSource::Group {
            account_id: a.id.clone(),
            group_id: SecurityGroupId::generate(),
            group_name: "gone".into(),
        },
        ..from_web.clone()
    };
    assert_eq!(
        s.add_rules(&db_group.id, &[missing_src])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::GroupNotFound
    );

    // A referenced group can't go; a self-reference doesn't count.
    let self_ref = Rule {
        protocol: Protocol::Icmp,
        from_port: -1,
        to_port: -1,
        source: RuleSource::Group {
            account_id: a.id.clone(),
            group_id: web.id.clone(),
            group_name: "web".into(),
        },
    };
    s.add_rules(&web.id, &[self_ref]).await.unwrap();
    let e = s.delete_group(&web.id).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::GroupInUse);
    assert!(e.message.contains(db_group.id.as_str()));

    // Remove is all or nothing.
    let e = s
        .remove_rules(&db_group.id, &[from_web.clone(), tcp(1, "1.2.3.4/32")])
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionNotFound);
    assert_eq!(
        s.group_by_id(&db_group.id)
            .await
            .unwrap()
            .unwrap()
            .rules
            .len(),
        1
    );
    s.remove_rules(&db_group.id, &[from_web]).await.unwrap();
    s.delete_group(&web.id).await.unwrap();
    assert!(s.group_by_id(&web.id).await.unwrap().is_none());
    assert_eq!(
        s.delete_group(&web.id).await.unwrap_err().kind,
        ErrorKind::GroupNotFound
    );
    assert_eq!(s.list_groups(Some(&a.id)).await.unwrap().len(), 1);
    assert_eq!(
        s.add_rules(&web.id, &[tcp(1, "1.2.3.4/32")])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::GroupNotFound
    );
}

async fn tags(s: &dyn Store) {
    let a = s.account_by_name("alpha").await.unwrap().unwrap();
    let g = s.group_by_name(&a.id, "db").await.unwrap().unwrap();
    let res = [(g.id.to_string(), ResourceType::SecurityGroup)];
    s.put_tags(
        &a.id,
        &res,
        &[("Name".into(), "db".into()), ("env".into(), "prod".into())],
    )
    .await
    .unwrap();
    s.put_tags(&a.id, &res, &[("env".into(), "dev".into())])
        .await
        .unwrap();
    let t = s.list_tags(Some(&a.id)).await.unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t.iter().find(|t| t.key == "env").unwrap().value, "dev");

    // Another account can't tag it.
    let other = AccountId::generate();
    assert_eq!(
        s.put_tags(&other, &res, &[("x".into(), "y".into())])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::GroupNotFound
    );

    // The 50-tag limit is enforced atomically.
    let many: Vec<(String, String)> = (0..49).map(|i| (format!("k{i}"), "v".into())).collect();
    let e = s.put_tags(&a.id, &res, &many).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::TagLimitExceeded);
    assert_eq!(s.list_tags(Some(&a.id)).await.unwrap().len(), 2);

    // Delete by key+value only when the value matches.
    s.delete_tags(
        &a.id,
        &[(g.id.to_string(), ResourceType::SecurityGroup)],
        &[TagSelector {
            key: "env".into(),
            value: Some("prod".into()),
        }],
    )
    .await
    .unwrap();
    assert_eq!(s.list_tags(Some(&a.id)).await.unwrap().len(), 2);
    s.delete_tags(
        &a.id,
        &[(g.id.to_string(), ResourceType::SecurityGroup)],
        &[TagSelector {
            key: "env".into(),
            value: None,
        }],
    )
    .await
    .unwrap();
    assert_eq!(s.list_tags(None).await.unwrap().len(), 1);
    s.delete_tags(
        &a.id,
        &[(g.id.to_string(), ResourceType::SecurityGroup)],
        &[],
    )
    .await
    .unwrap();
    assert!(s.list_tags(None).await.unwrap().is_empty());
    // Another account's resource is not there for the caller, even to untag.
    let e = s
        .delete_tags(
            &other,
            &[(g.id.to_string(), ResourceType::SecurityGroup)],
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::GroupNotFound);
}

async fn properties(s: &dyn Store) {
    assert!(s.property("cloud.x").await.unwrap().is_none());
    let v0 = s.version();
    s.set_property("cloud.x", "1").await.unwrap();
    assert_ne!(s.version(), v0, "a commit changes the version");
    let v1 = s.version();
    s.list_properties().await.unwrap();
    assert_eq!(s.version(), v1, "reads do not");
    s.set_property("cloud.x", "2").await.unwrap();
    assert_eq!(s.property("cloud.x").await.unwrap().as_deref(), Some("2"));
    assert_eq!(
        s.list_properties().await.unwrap(),
        vec![("cloud.x".into(), "2".into())]
    );
}
