//! What the local backend accepts: single-node access modes, block or ext4 /
//! xfs mounts with known flags, and its StorageClass parameters; and whether
//! an existing volume fits a capability.

use std::collections::HashMap;

use proto::v1::volume_capability::access_mode::Mode as AccessMode;
use proto::v1::volume_capability::AccessType;

use crate::backend;
use crate::config::FsType;
use crate::error::{Error, Result};
use crate::state;
use crate::validate::{self, Access, Capability, VFS_MOUNT_FLAGS};

/// Options of ext4/xfs the driver understands besides [`VFS_MOUNT_FLAGS`].
/// Everything else is refused, so a typo is an INVALID_ARGUMENT instead of
/// a mount failure later.
const LOCAL_FS_FLAGS: &[&str] = &[
    "discard",
    "nodiscard",
    "nouuid",
    "noquota",
    "usrquota",
    "grpquota",
    "prjquota",
    "quota",
    "user_xattr",
    "acl",
    "noacl",
    "data=ordered",
    "data=writeback",
    "data=journal",
    "barrier",
    "nobarrier",
    "errors=remount-ro",
    "errors=continue",
    "errors=panic",
];

/// Single-node modes only: a local disk is on one node.
pub fn access_mode(mode: AccessMode) -> std::result::Result<bool, String> {
    match mode {
        AccessMode::SingleNodeWriter
        | AccessMode::SingleNodeSingleWriter
        | AccessMode::SingleNodeMultiWriter => Ok(false),
        AccessMode::SingleNodeReaderOnly => Ok(true),
        other => Err(format!(
            "{} is not supported: local volumes live on one node",
            other.as_str_name()
        )),
    }
}

/// Block, or a mount of ext4 / xfs (empty: the default) with known flags.
pub fn access_type(field: &str, t: &AccessType) -> Result<Access> {
    match t {
        AccessType::Block(_) => Ok(Access::Block),
        AccessType::Mount(m) => {
            let fs_type = if m.fs_type.is_empty() {
                None
            } else {
                Some(FsType::parse(&m.fs_type).ok_or_else(|| {
                    Error::invalid(
                        format!("{field}.mount.fs_type"),
                        format!("{:?} is not supported (ext4 or xfs)", m.fs_type),
                    )
                })?)
            };
            for (i, f) in m.mount_flags.iter().enumerate() {
                if !VFS_MOUNT_FLAGS.contains(&f.as_str()) && !LOCAL_FS_FLAGS.contains(&f.as_str()) {
                    return Err(Error::invalid(
                        format!("{field}.mount.mount_flags[{i}]"),
                        "is not a mount option this driver supports",
                    ));
                }
            }
            validate::mount_flags_size(field, &m.mount_flags)?;
            Ok(Access::Mount {
                fs_type,
                flags: m.mount_flags.clone(),
            })
        }
    }
}

/// StorageClass parameters of the local backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// Allocate the whole image up front instead of a sparse file.
    pub preallocate: bool,
}

/// Validates CreateVolume parameters of local volumes. Known keys:
/// `backend` (`local`), `preallocate` (`true`/`false`); keys under
/// `csi.storage.k8s.io/` are metadata the sidecars add and are ignored.
/// Anything else is refused.
pub fn params(field: &str, map: &HashMap<String, String>) -> Result<Params> {
    let mut p = Params::default();
    for (k, v) in map {
        match k.as_str() {
            "backend" => {
                if v != super::base::NAME {
                    return Err(Error::invalid(
                        format!("{field}[backend]"),
                        format!(
                            "{v:?} is not an available backend ({})",
                            backend::registered()
                        ),
                    ));
                }
            }
            "preallocate" => {
                p.preallocate = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(Error::invalid(
                            format!("{field}[preallocate]"),
                            "must be true or false",
                        ))
                    }
                }
            }
            k if validate::is_sidecar_key(k) => {}
            other => {
                return Err(Error::invalid(
                    format!("{field}[{other}]"),
                    "is not a known parameter",
                ))
            }
        }
    }
    Ok(p)
}

/// Whether a volume created with `v` supports capability `c`; the reason if not.
pub fn access_supported(v: &state::Volume, c: &Capability) -> std::result::Result<(), String> {
    match (&c.access, v.access.as_str()) {
        (Access::Block, "mount") => {
            Err("the volume was created for filesystem access, not block".into())
        }
        (Access::Mount { .. }, "block") => {
            Err("the volume was created for block access, not filesystem".into())
        }
        (
            Access::Mount {
                fs_type: Some(t), ..
            },
            _,
        ) if !v.fs_type.is_empty() && v.fs_type != t.as_str() => Err(format!(
            "the volume was created for {}, not {}",
            v.fs_type,
            t.as_str()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_params_are_named() {
        let mut m = HashMap::new();
        m.insert("colour".to_string(), "blue".to_string());
        let e = params("parameters", &m).unwrap_err();
        assert!(e.to_string().contains("parameters[colour]"), "{e}");
        m.clear();
        m.insert("csi.storage.k8s.io/pvc/name".into(), "x".into());
        assert!(params("parameters", &m).is_ok());
    }
}
