//! Schema migrations, applied in order at open time inside one transaction
//! each. A migration, once released, is never edited: a change is a new
//! entry. SQL here stays portable between SQLite and PostgreSQL (TEXT, BIGINT,
//! INTEGER, composite keys; no AUTOINCREMENT, no SQLite-only pragmas).

pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);
CREATE TABLE users (
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
CREATE TABLE access_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    sealed_secret TEXT NOT NULL,
    active INTEGER NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX access_keys_account ON access_keys (account_id);
CREATE TABLE key_pairs (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    key_type TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (account_id, name)
);
CREATE TABLE security_groups (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (account_id, name)
);
CREATE TABLE security_group_rules (
    group_id TEXT NOT NULL,
    protocol TEXT NOT NULL,
    from_port INTEGER NOT NULL,
    to_port INTEGER NOT NULL,
    cidr TEXT NOT NULL,
    source_group_id TEXT NOT NULL,
    PRIMARY KEY (group_id, protocol, from_port, to_port, cidr, source_group_id)
);
CREATE INDEX security_group_rules_source ON security_group_rules (source_group_id);
CREATE TABLE tags (
    resource_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    tag_key TEXT NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (resource_id, tag_key)
);
CREATE INDEX tags_account ON tags (account_id);
CREATE TABLE properties (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    location TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    kernel_id TEXT NOT NULL,
    ramdisk_id TEXT NOT NULL,
    architecture TEXT NOT NULL,
    public INTEGER NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (account_id, name)
);
CREATE TABLE image_launch_permissions (
    image_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    PRIMARY KEY (image_id, account_id)
);
"#,
    ),
    (
        3,
        r#"
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    reservation_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    image_id TEXT NOT NULL,
    kernel_id TEXT NOT NULL,
    ramdisk_id TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    key_name TEXT NOT NULL,
    group_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    user_data TEXT NOT NULL,
    zone TEXT NOT NULL,
    node_id TEXT NOT NULL,
    private_ip TEXT NOT NULL,
    mac TEXT NOT NULL,
    public_ip TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL,
    launch_index INTEGER NOT NULL,
    launch_ms BIGINT NOT NULL,
    terminated_ms BIGINT NOT NULL
);
CREATE INDEX instances_account ON instances (account_id);
CREATE TABLE segments (
    group_id TEXT PRIMARY KEY,
    idx INTEGER NOT NULL UNIQUE
);
"#,
    ),
    (
        4,
        r#"
CREATE TABLE addresses (
    public_ip TEXT PRIMARY KEY,
    allocation_id TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    association_id TEXT NOT NULL,
    restore_ip TEXT NOT NULL,
    allocated_ms BIGINT NOT NULL
);
CREATE INDEX addresses_account ON addresses (account_id);
"#,
    ),
    (
        5,
        r#"
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    size_gib BIGINT NOT NULL,
    snapshot_id TEXT NOT NULL,
    zone TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    attach_instance TEXT NOT NULL,
    attach_device TEXT NOT NULL,
    attach_state TEXT NOT NULL,
    attach_ms BIGINT NOT NULL,
    force_detach INTEGER NOT NULL
);
CREATE INDEX volumes_account ON volumes (account_id);
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    volume_id TEXT NOT NULL,
    volume_size_gib BIGINT NOT NULL,
    description TEXT NOT NULL,
    state TEXT NOT NULL,
    progress INTEGER NOT NULL,
    started_ms BIGINT NOT NULL,
    location TEXT NOT NULL,
    compression TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    raw_digest TEXT NOT NULL,
    error TEXT NOT NULL,
    public INTEGER NOT NULL,
    shared_with TEXT NOT NULL
);
"#,
    ),
    (
        6,
        r#"
ALTER TABLE snapshots ADD COLUMN upload_id TEXT NOT NULL DEFAULT '';
"#,
    ),
    (
        7,
        r#"
ALTER TABLE snapshots ADD COLUMN answered INTEGER NOT NULL DEFAULT 1;
"#,
    ),
];
