//! Fixtures the SC's integration tests share.

use ironbark_sc_api::{ExportSpec, VolumeSpec};

/// A blank 1 GiB volume exported to `exports` (NC node ids).
pub fn vol(id: &str, exports: &[&str]) -> VolumeSpec {
    VolumeSpec {
        volume_id: id.into(),
        size_gib: 1,
        source: None,
        exports: exports
            .iter()
            .map(|n| ExportSpec {
                node_id: n.to_string(),
            })
            .collect(),
    }
}
