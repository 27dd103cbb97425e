//! CSI messages both layers build: volumes' topology and content source,
//! snapshots, sizes, usage, publish contexts, the ValidateVolumeCapabilities
//! answer, and the CreateSnapshot "same name exists" check. Generic: no
//! backend here; the services and every backend use these.

use proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use proto::v1::*;

use crate::config::{DEFAULT_VOLUME_SIZE, TOPOLOGY_KEY};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::mount;
use crate::state;
use crate::validate::{Capability, Range};
use proto::v1::volume_capability::access_mode::Mode as AccessMode;

/// Volume sizes are multiples of this.
pub const ALIGN: u64 = 4096;

/// `n` rounded up to [`ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Picks the size of a new volume. Honours the range exactly when it can;
/// OUT_OF_RANGE when the limit is below what the volume needs (`floor`).
pub fn choose_size(range: Range, floor: u64) -> Result<u64> {
    let base = match (range.required, range.limit) {
        (Some(r), _) => r,
        (None, Some(l)) => l.min(DEFAULT_VOLUME_SIZE),
        (None, None) => DEFAULT_VOLUME_SIZE,
    };
    let need = base.max(floor);
    let mut size = align_up(need);
    if let Some(l) = range.limit {
        if size > l {
            let down = l / ALIGN * ALIGN;
            if down >= need.max(1) && down >= floor {
                size = down;
            } else {
                return Err(Error::OutOfRange(format!(
                    "capacity_range.limit_bytes {l} is below the {need} bytes this volume needs"
                )));
            }
        }
    }
    Ok(size)
}

/// This node's topology segment.
pub fn node_topology(d: &Driver) -> Topology {
    Topology {
        segments: [(TOPOLOGY_KEY.to_string(), d.config.node_id.clone())].into(),
    }
}

/// Whether a topology is exactly this node's segment.
pub fn topology_matches(d: &Driver, t: &Topology) -> bool {
    t.segments.len() == 1 && t.segments.get(TOPOLOGY_KEY) == Some(&d.config.node_id)
}

/// The content source recorded with a volume.
pub fn content_source(v: &state::Volume) -> Option<VolumeContentSource> {
    let t = match v.source_kind.as_str() {
        "snapshot" => SourceType::Snapshot(SnapshotSource {
            snapshot_id: v.source_id.clone(),
        }),
        "volume" => SourceType::Volume(VolumeSource {
            volume_id: v.source_id.clone(),
        }),
        _ => return None,
    };
    Some(VolumeContentSource { r#type: Some(t) })
}

/// The CSI snapshot of a record.
pub fn to_snapshot(s: &state::Snapshot) -> Snapshot {
    Snapshot {
        size_bytes: s.size as i64,
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: s.created_ns / 1_000_000_000,
            nanos: (s.created_ns % 1_000_000_000) as i32,
        }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

/// SINGLE_NODE_SINGLE_WRITER allows one publication on the node: a
/// NodePublishVolume with that mode at `target` while the volume is
/// published at another target (`others`) is FAILED_PRECONDITION.
pub fn check_single_writer<'a>(
    cap: &Capability,
    volume_id: &str,
    target: &str,
    others: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    if cap.mode != AccessMode::SingleNodeSingleWriter {
        return Ok(());
    }
    match others.into_iter().find(|t| *t != target) {
        Some(other) => Err(Error::FailedPrecondition(format!(
            "volume {volume_id} is published at {other}; SINGLE_NODE_SINGLE_WRITER allows one target"
        ))),
        None => Ok(()),
    }
}

/// A volume condition.
pub fn condition(abnormal: bool, message: impl Into<String>) -> VolumeCondition {
    VolumeCondition {
        abnormal,
        message: message.into(),
    }
}

/// The nodes a volume is published to (controller publications).
pub fn published_nodes(d: &Driver, volume_id: &str) -> Result<Vec<String>> {
    Ok(d.state
        .controller_publications(volume_id)?
        .into_iter()
        .map(|p| p.node_id)
        .collect())
}

/// A ControllerPublishVolume against the volume's recorded publications.
#[derive(Debug, PartialEq, Eq)]
pub enum PriorPublication {
    /// The same publication (node, readonly flag, capability) is recorded:
    /// an idempotent retry.
    Same,
    /// Published to this other node (and not to the one asked for).
    Elsewhere(String),
    /// Not published anywhere.
    None,
}

/// Looks the publication of `req` up in the records; a publication to the
/// same node with another readonly flag or capability is ALREADY_EXISTS.
pub fn prior_publication(
    d: &Driver,
    req: &ControllerPublishVolumeRequest,
    cap: &Capability,
) -> Result<PriorPublication> {
    let cap_text = format!("{cap:?}");
    let pubs = d.state.controller_publications(&req.volume_id)?;
    if let Some(p) = pubs.iter().find(|p| p.node_id == req.node_id) {
        if p.readonly == req.readonly && p.capability == cap_text {
            return Ok(PriorPublication::Same);
        }
        return Err(Error::AlreadyExists(format!(
            "volume {} is already published to node {} with a different capability or readonly flag",
            req.volume_id, req.node_id
        )));
    }
    Ok(match pubs.into_iter().next() {
        Some(p) => PriorPublication::Elsewhere(p.node_id),
        None => PriorPublication::None,
    })
}

/// Records the publication of `req` (after [`prior_publication`]).
pub fn record_publication(
    d: &Driver,
    req: &ControllerPublishVolumeRequest,
    cap: &Capability,
) -> Result<()> {
    d.state
        .insert_controller_publication(&state::ControllerPublication {
            volume_id: req.volume_id.clone(),
            node_id: req.node_id.clone(),
            readonly: req.readonly,
            capability: format!("{cap:?}"),
        })
}

/// The ControllerPublishVolume answer: the node reads `readonly` from it.
pub fn publish_context(readonly: bool) -> ControllerPublishVolumeResponse {
    ControllerPublishVolumeResponse {
        publish_context: [("readonly".to_string(), readonly.to_string())].into(),
    }
}

/// Bytes and inodes as NodeGetVolumeStats reports them.
pub fn usage_entries(b: mount::Counts, i: mount::Counts) -> Vec<VolumeUsage> {
    vec![
        VolumeUsage {
            total: b.0 as i64,
            available: b.1 as i64,
            used: b.2 as i64,
            unit: volume_usage::Unit::Bytes as i32,
        },
        VolumeUsage {
            total: i.0 as i64,
            available: i.1 as i64,
            used: i.2 as i64,
            unit: volume_usage::Unit::Inodes as i32,
        },
    ]
}

/// The ValidateVolumeCapabilities answer: confirmed as asked when nothing
/// is wrong, otherwise unconfirmed with every problem in the message.
pub fn validation_answer(
    problems: Vec<String>,
    req: ValidateVolumeCapabilitiesRequest,
) -> ValidateVolumeCapabilitiesResponse {
    if !problems.is_empty() {
        return ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message: problems.join("; "),
        };
    }
    ValidateVolumeCapabilitiesResponse {
        confirmed: Some(validate_volume_capabilities_response::Confirmed {
            volume_context: req.volume_context,
            volume_capabilities: req.volume_capabilities,
            parameters: req.parameters,
            mutable_parameters: Default::default(),
        }),
        message: String::new(),
    }
}

/// CreateSnapshot's "same name exists" check, made under the name's lock:
/// the snapshot to answer with when a ready one of that name is of the
/// same source (an idempotent repeat), ALREADY_EXISTS when it is of
/// another. A half-made one (an attempt that failed or crashed) is
/// forgotten after `discard` removed what the backend had made of it.
pub fn existing_snapshot(
    d: &Driver,
    name: &str,
    source_volume_id: &str,
    discard: impl FnOnce(&state::Snapshot) -> Result<()>,
) -> Result<Option<Snapshot>> {
    let Some(s) = d.state.snapshot_by_name(name)? else {
        return Ok(None);
    };
    if s.state == "ready" {
        if s.source_volume_id == source_volume_id {
            return Ok(Some(to_snapshot(&s)));
        }
        return Err(Error::AlreadyExists(format!(
            "a snapshot named {name:?} exists for volume {}, not {source_volume_id}",
            s.source_volume_id
        )));
    }
    discard(&s)?;
    d.state.delete_snapshot(&s.id)?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let r = |q, l| Range {
            required: q,
            limit: l,
        };
        assert_eq!(
            choose_size(r(None, None), 4096).unwrap(),
            DEFAULT_VOLUME_SIZE
        );
        assert_eq!(
            choose_size(r(Some(16 << 20), None), 1 << 20).unwrap(),
            16 << 20
        );
        assert_eq!(choose_size(r(Some(1000), Some(5000)), 1).unwrap(), 4096);
        assert_eq!(
            choose_size(r(Some(16 << 20), Some(16 << 20)), 1 << 20).unwrap(),
            16 << 20
        );
        assert!(matches!(
            choose_size(r(Some(16 << 20), Some(32 << 20)), 300 << 20),
            Err(Error::OutOfRange(_))
        ));
        assert_eq!(
            choose_size(r(Some(16 << 20), Some(400 << 20)), 300 << 20).unwrap(),
            300 << 20
        );
    }
}
