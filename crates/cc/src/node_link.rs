//! How the CC talks to one NC: the [`NodeLink`] trait, its HTTP
//! implementation (the NC crate's typed [`NodeClient`]) and [`FakeNode`].
//!
//! The controller only needs five calls and one distinction in their
//! failures: [`LinkError::is_unreachable`] (no connection, or no answer in
//! time), which is when a terminate is broadcast to every node, versus a
//! node that answered no. Timeouts are imposed by the controller around each
//! call, so a link (or a fake) need not implement them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use ironbark_nc::{ClientError, NodeClient};
use ironbark_node_api::{
    AttachState, DesiredInstances, DesiredVolumes, InstanceReport, NodeReport, TerminateAck,
    VmState, VolumeAttachReport, VolumesReport,
};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// No connection, or it broke before an answer came.
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The node answered with an error status.
    #[error("refused with HTTP {status}: {message}")]
    Refused { status: u16, message: String },
    /// The node answered something else than the API's JSON.
    #[error("bad answer: {0}")]
    Protocol(String),
}

impl LinkError {
    /// The node may be down or cut off (as opposed to having said no).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, LinkError::Unreachable(_) | LinkError::Timeout(_))
    }
}

/// The NC control API, as the CC uses it.
#[async_trait]
pub trait NodeLink: Send + Sync + 'static {
    /// `PUT /v1/instances`.
    async fn apply(&self, desired: &DesiredInstances) -> Result<NodeReport, LinkError>;
    /// `GET /v1/instances`.
    async fn report(&self) -> Result<NodeReport, LinkError>;
    /// `POST /v1/instances/{id}/terminate`.
    async fn terminate(&self, instance_id: &str) -> Result<TerminateAck, LinkError>;
    /// `POST /v1/instances/{id}/reboot`.
    async fn reboot(&self, instance_id: &str) -> Result<(), LinkError>;
    /// `GET /v1/instances/{id}/console`.
    async fn console(&self, instance_id: &str) -> Result<String, LinkError>;
    /// `PUT /v1/volumes`.
    async fn apply_volumes(&self, desired: &DesiredVolumes) -> Result<VolumesReport, LinkError>;
    /// `GET /v1/volumes`.
    async fn volumes(&self) -> Result<VolumesReport, LinkError>;
}

impl From<ClientError> for LinkError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Unreachable { .. } => LinkError::Unreachable(e.to_string()),
            ClientError::Timeout { timeout, .. } => LinkError::Timeout(timeout),
            ClientError::Status {
                status, message, ..
            } => LinkError::Refused { status, message },
            ClientError::Protocol { .. } | ClientError::InvalidUrl { .. } => {
                LinkError::Protocol(e.to_string())
            }
        }
    }
}

#[async_trait]
impl NodeLink for NodeClient {
    async fn apply(&self, desired: &DesiredInstances) -> Result<NodeReport, LinkError> {
        Ok(NodeClient::apply(self, desired).await?)
    }
    async fn report(&self) -> Result<NodeReport, LinkError> {
        Ok(NodeClient::report(self).await?)
    }
    async fn terminate(&self, instance_id: &str) -> Result<TerminateAck, LinkError> {
        Ok(NodeClient::terminate(self, instance_id).await?)
    }
    async fn reboot(&self, instance_id: &str) -> Result<(), LinkError> {
        Ok(NodeClient::reboot(self, instance_id).await?)
    }
    async fn console(&self, instance_id: &str) -> Result<String, LinkError> {
        Ok(NodeClient::console(self, instance_id).await?)
    }
    async fn apply_volumes(&self, desired: &DesiredVolumes) -> Result<VolumesReport, LinkError> {
        Ok(NodeClient::apply_volumes(self, desired).await?)
    }
    async fn volumes(&self) -> Result<VolumesReport, LinkError> {
        Ok(NodeClient::volumes(self).await?)
    }
}

/// How a [`FakeNode`] behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeMode {
    /// Answers every call.
    Up,
    /// Refuses connections at once.
    Down,
    /// Accepts calls and never answers (a hung host, a partition).
    Hang,
}

/// A call a [`FakeNode`] received (also while down or hung).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeCall {
    /// The generation and instance ids of a desired set.
    Apply(u64, Vec<String>),
    Report,
    Terminate(String),
    Reboot(String),
    Console(String),
}

struct FakeState {
    mode: FakeMode,
    generation: u64,
    instances: BTreeMap<String, InstanceReport>,
    /// Explicitly terminated: never started again, as on a real NC.
    tombstones: BTreeSet<String>,
    calls: Vec<NodeCall>,
    /// Volume sets received (kept apart from `calls`, which tests of the
    /// instance relay compare whole).
    volume_sets: Vec<DesiredVolumes>,
    /// The set in force.
    volumes: DesiredVolumes,
}

/// An NC in memory: runs whatever it is told at once, ignores older
/// generations like the real one, and can be taken down or hung.
pub struct FakeNode {
    node_id: String,
    state: Mutex<FakeState>,
}

impl FakeNode {
    pub fn new(node_id: &str) -> Self {
        FakeNode {
            node_id: node_id.to_string(),
            state: Mutex::new(FakeState {
                mode: FakeMode::Up,
                generation: 0,
                instances: BTreeMap::new(),
                tombstones: BTreeSet::new(),
                calls: Vec::new(),
                volume_sets: Vec::new(),
                volumes: DesiredVolumes::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_mode(&self, mode: FakeMode) {
        self.lock().mode = mode;
    }

    /// The calls received so far, and forgets them.
    pub fn take_calls(&self) -> Vec<NodeCall> {
        std::mem::take(&mut self.lock().calls)
    }

    /// The volume sets received so far, and forgets them.
    pub fn take_volume_sets(&self) -> Vec<DesiredVolumes> {
        std::mem::take(&mut self.lock().volume_sets)
    }

    /// Answers per the mode without recording a call.
    async fn enter_quiet(&self) -> Result<MutexGuard<'_, FakeState>, LinkError> {
        let mode = self.lock().mode;
        match mode {
            FakeMode::Up => Ok(self.lock()),
            FakeMode::Down => Err(LinkError::Unreachable(format!(
                "{}: connection refused",
                self.node_id
            ))),
            FakeMode::Hang => std::future::pending().await,
        }
    }

    /// What it has plugged in: every volume of the last set whose instance
    /// runs here, at once.
    fn volumes_of(&self, st: &FakeState) -> VolumesReport {
        let last = &st.volumes;
        VolumesReport {
            node_id: self.node_id.clone(),
            generation: last.generation,
            attachments: last
                .instances
                .iter()
                .filter(|(id, _)| st.instances.contains_key(*id))
                .flat_map(|(id, vols)| {
                    vols.iter().map(move |v| VolumeAttachReport {
                        instance_id: id.clone(),
                        volume_id: v.volume_id.clone(),
                        device: v.device.clone(),
                        state: AttachState::Attached,
                        error: None,
                    })
                })
                .collect(),
        }
    }

    /// Ids of the instances it runs.
    pub fn running(&self) -> Vec<String> {
        self.lock().instances.keys().cloned().collect()
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// A restart that lost everything (as if its host was rebuilt).
    pub fn forget_everything(&self) {
        let mut st = self.lock();
        st.generation = 0;
        st.instances.clear();
    }

    /// Makes it run `instance_id` although nobody asked (a leftover).
    pub fn insert_running(&self, instance_id: &str) {
        self.lock()
            .instances
            .insert(instance_id.to_string(), running(instance_id));
    }

    fn report_of(&self, st: &FakeState) -> NodeReport {
        NodeReport {
            node_id: self.node_id.clone(),
            cpus: 4,
            memory_mib: 4096,
            disk_gib: 100,
            generation: st.generation,
            instances: st.instances.values().cloned().collect(),
        }
    }

    /// Records `call`; answers per the mode.
    async fn enter(&self, call: NodeCall) -> Result<MutexGuard<'_, FakeState>, LinkError> {
        let mode = {
            let mut st = self.lock();
            st.calls.push(call);
            st.mode
        };
        match mode {
            FakeMode::Up => Ok(self.lock()),
            FakeMode::Down => Err(LinkError::Unreachable(format!(
                "{}: connection refused",
                self.node_id
            ))),
            FakeMode::Hang => std::future::pending().await,
        }
    }
}

fn running(id: &str) -> InstanceReport {
    InstanceReport {
        instance_id: id.to_string(),
        state: VmState::Running,
        error: None,
        started_ms: Some(1),
    }
}

#[async_trait]
impl NodeLink for FakeNode {
    async fn apply(&self, desired: &DesiredInstances) -> Result<NodeReport, LinkError> {
        let ids = desired
            .instances
            .iter()
            .map(|i| i.instance_id.clone())
            .collect();
        let mut st = self.enter(NodeCall::Apply(desired.generation, ids)).await?;
        if desired.generation >= st.generation {
            st.generation = desired.generation;
            st.instances
                .retain(|id, _| desired.instances.iter().any(|i| i.instance_id == *id));
            for spec in &desired.instances {
                if st.tombstones.contains(&spec.instance_id) {
                    continue;
                }
                st.instances
                    .entry(spec.instance_id.clone())
                    .or_insert_with(|| running(&spec.instance_id));
            }
        }
        Ok(self.report_of(&st))
    }

    async fn report(&self) -> Result<NodeReport, LinkError> {
        let st = self.enter(NodeCall::Report).await?;
        Ok(self.report_of(&st))
    }

    async fn terminate(&self, instance_id: &str) -> Result<TerminateAck, LinkError> {
        let mut st = self.enter(NodeCall::Terminate(instance_id.into())).await?;
        st.tombstones.insert(instance_id.to_string());
        Ok(TerminateAck {
            was_here: st.instances.remove(instance_id).is_some(),
        })
    }

    async fn reboot(&self, instance_id: &str) -> Result<(), LinkError> {
        let st = self.enter(NodeCall::Reboot(instance_id.into())).await?;
        if st.instances.contains_key(instance_id) {
            Ok(())
        } else {
            Err(LinkError::Refused {
                status: 404,
                message: format!("instance {instance_id} is not on this node"),
            })
        }
    }

    async fn apply_volumes(&self, desired: &DesiredVolumes) -> Result<VolumesReport, LinkError> {
        let mut st = self.enter_quiet().await?;
        st.volume_sets.push(desired.clone());
        if desired.generation >= st.volumes.generation {
            st.volumes = desired.clone();
        }
        Ok(self.volumes_of(&st))
    }

    async fn volumes(&self) -> Result<VolumesReport, LinkError> {
        let st = self.enter_quiet().await?;
        Ok(self.volumes_of(&st))
    }

    async fn console(&self, instance_id: &str) -> Result<String, LinkError> {
        let st = self.enter(NodeCall::Console(instance_id.into())).await?;
        if st.instances.contains_key(instance_id) {
            Ok(format!("console of {instance_id}\n"))
        } else {
            Err(LinkError::Refused {
                status: 404,
                message: format!("instance {instance_id} is not on this node"),
            })
        }
    }
}
