//! Argument validation shared by the services. Nothing here touches the
//! system: every request is checked with these before any device is used.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use proto::v1::volume_capability::access_mode::Mode as AccessMode;
use proto::v1::volume_capability::AccessType;
use proto::v1::{CapacityRange, VolumeCapability};

use crate::config::FsType;
use crate::error::{Error, Result};

/// Longest id or name the spec allows (128 bytes for strings).
pub const MAX_ID_LEN: usize = 128;

/// A non-empty, bounded string with no control characters. For names.
pub fn name(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::missing(field));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Error::invalid(
            field,
            format!("is {} bytes, the limit is {MAX_ID_LEN}", value.len()),
        ));
    }
    if value
        .chars()
        .any(|c| matches!(c as u32, 0..=8 | 0xB | 0xC | 0xE..=0x1F | 0x7F..=0x9F))
    {
        return Err(Error::invalid(field, "contains a control character"));
    }
    Ok(())
}

/// An id: like a name, and also nothing that could act as a path component
/// (`/`, `\`, `..`, a leading `.`). Unknown-but-harmless ids pass here and
/// are answered NOT_FOUND by the lookup.
pub fn id(field: &str, value: &str) -> Result<()> {
    name(field, value)?;
    if value.contains('/') || value.contains('\\') || value.contains("..") || value.starts_with('.')
    {
        return Err(Error::invalid(
            field,
            format!("{value:?} is not a valid id (path characters)"),
        ));
    }
    if value.chars().any(char::is_whitespace) {
        return Err(Error::invalid(
            field,
            format!("{value:?} is not a valid id (whitespace)"),
        ));
    }
    Ok(())
}

/// A CO-provided absolute path (staging or target). Returns it normalised.
/// Refuses relative paths, `..`, the root, and anything inside `forbidden`
/// (the pool and state directories).
pub fn abs_path(field: &str, value: &str, forbidden: &[&Path]) -> Result<PathBuf> {
    abs_path_with(field, value, forbidden, true)
}

/// [`abs_path`] without resolving symlinks: for paths that may be NFS
/// mounts of a server that no longer answers, where even `lstat` can block.
pub fn abs_path_lexical(field: &str, value: &str, forbidden: &[&Path]) -> Result<PathBuf> {
    abs_path_with(field, value, forbidden, false)
}

fn abs_path_with(field: &str, value: &str, forbidden: &[&Path], resolve: bool) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(Error::missing(field));
    }
    if value.len() > 4096 || value.contains('\0') {
        return Err(Error::invalid(field, "is not a usable path"));
    }
    let p = Path::new(value);
    if !p.is_absolute() {
        return Err(Error::invalid(
            field,
            format!("{value:?} is not an absolute path"),
        ));
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::invalid(
                    field,
                    format!("{value:?} must not contain '..'"),
                ));
            }
        }
    }
    if out == Path::new("/") {
        return Err(Error::invalid(field, "must not be the root directory"));
    }
    if !resolve {
        return check_forbidden(field, out, forbidden);
    }
    // The kernel reports mounts by resolved path and mount(2) follows
    // symlinks: resolve the part that exists, so a path through a symlinked
    // directory is recognised when repeated, and cannot lead into our own
    // directories unnoticed.
    check_forbidden(field, resolve_existing(&out), forbidden)
}

fn check_forbidden(field: &str, out: PathBuf, forbidden: &[&Path]) -> Result<PathBuf> {
    for f in forbidden {
        if out.starts_with(f) || f.starts_with(&out) {
            return Err(Error::invalid(
                field,
                format!(
                    "{:?} overlaps the driver's own directory {}",
                    out.display().to_string(),
                    f.display()
                ),
            ));
        }
    }
    Ok(out)
}

/// `p` with its longest existing ancestor replaced by its canonical form.
fn resolve_existing(p: &Path) -> PathBuf {
    let mut existing = p.to_path_buf();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut out = real;
            for c in rest.iter().rev() {
                out.push(c);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent().map(Path::to_path_buf),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// How a capability wants the volume: block device, or filesystem with
/// type and mount flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Raw block device.
    Block,
    /// Mounted filesystem; `fs_type` is `None` when the request left it empty.
    Mount {
        fs_type: Option<FsType>,
        flags: Vec<String>,
    },
}

/// A validated capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Access type.
    pub access: Access,
    /// Whether the access mode is one of the read-only ones.
    pub read_only_mode: bool,
    /// The access mode as sent.
    pub mode: AccessMode,
}

/// Options of the kernel's generic mount layer (mount(2) flags), valid for
/// every filesystem, NFS included.
pub(crate) const VFS_MOUNT_FLAGS: &[&str] = &[
    "ro",
    "rw",
    "noexec",
    "exec",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "noatime",
    "atime",
    "nodiratime",
    "diratime",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "nolazytime",
    "sync",
    "async",
    "dirsync",
    "defaults",
];

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

/// Validates one capability; `field` is e.g. `volume_capabilities[0]`.
/// Unsupported access modes (multi-node ones: a local disk is on one node)
/// are INVALID_ARGUMENT.
pub fn capability(field: &str, cap: &VolumeCapability) -> Result<Capability> {
    capability_for(field, cap, Backend::Local)
}

/// Which storage backend a capability is checked for: local disks live on
/// one node; NFS volumes are filesystems reachable from every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Image files on loop devices.
    Local,
    /// Subdirectories of NFS exports.
    Nfs,
}

/// [`capability`] for a given backend.
pub fn capability_for(field: &str, cap: &VolumeCapability, backend: Backend) -> Result<Capability> {
    let mode_field = format!("{field}.access_mode");
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| Error::missing(mode_field.clone()))?;
    let mode = AccessMode::try_from(mode.mode).map_err(|_| {
        Error::invalid(
            format!("{mode_field}.mode"),
            format!("unknown mode {}", mode.mode),
        )
    })?;
    let read_only_mode = match mode {
        AccessMode::SingleNodeWriter => false,
        AccessMode::SingleNodeReaderOnly => true,
        AccessMode::Unknown => return Err(Error::missing(format!("{mode_field}.mode"))),
        AccessMode::MultiNodeReaderOnly if backend == Backend::Nfs => true,
        AccessMode::MultiNodeSingleWriter | AccessMode::MultiNodeMultiWriter
            if backend == Backend::Nfs =>
        {
            false
        }
        other => {
            return Err(Error::invalid(
                format!("{mode_field}.mode"),
                format!(
                    "{} is not supported: local volumes live on one node",
                    other.as_str_name()
                ),
            ))
        }
    };
    let access = match &cap.access_type {
        None => {
            return Err(Error::invalid(
                format!("{field}.access_type"),
                "one of block or mount is required",
            ))
        }
        Some(AccessType::Block(_)) if backend == Backend::Nfs => {
            return Err(Error::invalid(
                format!("{field}.block"),
                "NFS volumes are filesystems; block access is not possible",
            ))
        }
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(m)) if backend == Backend::Nfs => {
            if !matches!(m.fs_type.as_str(), "" | "nfs" | "nfs4") {
                return Err(Error::invalid(
                    format!("{field}.mount.fs_type"),
                    format!(
                        "{:?} is not an NFS filesystem type (nfs, nfs4 or empty)",
                        m.fs_type
                    ),
                ));
            }
            if m.mount_flags.iter().map(String::len).sum::<usize>() > 4096 {
                return Err(Error::invalid(
                    format!("{field}.mount.mount_flags"),
                    "exceed 4 KiB",
                ));
            }
            for (i, f) in m.mount_flags.iter().enumerate() {
                crate::nfs::params::check_mount_option(
                    &format!("{field}.mount.mount_flags[{i}]"),
                    f,
                )?;
            }
            if !m.volume_mount_group.is_empty() {
                return Err(Error::invalid(
                    format!("{field}.mount.volume_mount_group"),
                    "is not supported (no VOLUME_MOUNT_GROUP capability)",
                ));
            }
            Access::Mount {
                fs_type: None,
                flags: m.mount_flags.clone(),
            }
        }
        Some(AccessType::Mount(m)) => {
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
            let mut total = 0;
            for (i, f) in m.mount_flags.iter().enumerate() {
                total += f.len();
                if !VFS_MOUNT_FLAGS.contains(&f.as_str()) && !LOCAL_FS_FLAGS.contains(&f.as_str()) {
                    return Err(Error::invalid(
                        format!("{field}.mount.mount_flags[{i}]"),
                        "is not a mount option this driver supports",
                    ));
                }
            }
            if total > 4096 {
                return Err(Error::invalid(
                    format!("{field}.mount.mount_flags"),
                    "exceed 4 KiB",
                ));
            }
            if !m.volume_mount_group.is_empty() {
                return Err(Error::invalid(
                    format!("{field}.mount.volume_mount_group"),
                    "is not supported (no VOLUME_MOUNT_GROUP capability)",
                ));
            }
            Access::Mount {
                fs_type,
                flags: m.mount_flags.clone(),
            }
        }
    };
    Ok(Capability {
        access,
        read_only_mode,
        mode,
    })
}

/// Validates a required list of capabilities.
pub fn capabilities(field: &str, caps: &[VolumeCapability]) -> Result<Vec<Capability>> {
    capabilities_for(field, caps, Backend::Local)
}

/// [`capabilities`] for a given backend.
pub fn capabilities_for(
    field: &str,
    caps: &[VolumeCapability],
    backend: Backend,
) -> Result<Vec<Capability>> {
    if caps.is_empty() {
        return Err(Error::missing(field));
    }
    caps.iter()
        .enumerate()
        .map(|(i, c)| capability_for(&format!("{field}[{i}]"), c, backend))
        .collect()
}

/// Validated capacity bounds in bytes (`None` = not set).
#[derive(Clone, Copy, Debug, Default)]
pub struct Range {
    /// Lower bound.
    pub required: Option<u64>,
    /// Upper bound.
    pub limit: Option<u64>,
}

/// Validates a capacity range: no negatives, limit >= required.
pub fn range(field: &str, r: Option<&CapacityRange>) -> Result<Range> {
    let Some(r) = r else {
        return Ok(Range::default());
    };
    if r.required_bytes < 0 {
        return Err(Error::invalid(
            format!("{field}.required_bytes"),
            "must not be negative",
        ));
    }
    if r.limit_bytes < 0 {
        return Err(Error::invalid(
            format!("{field}.limit_bytes"),
            "must not be negative",
        ));
    }
    let required = (r.required_bytes > 0).then_some(r.required_bytes as u64);
    let limit = (r.limit_bytes > 0).then_some(r.limit_bytes as u64);
    if let (Some(q), Some(l)) = (required, limit) {
        if l < q {
            return Err(Error::invalid(
                format!("{field}.limit_bytes"),
                format!("{l} is smaller than required_bytes {q}"),
            ));
        }
    }
    Ok(range_ok(required, limit))
}

fn range_ok(required: Option<u64>, limit: Option<u64>) -> Range {
    Range { required, limit }
}

/// StorageClass parameters of the local backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// Allocate the whole image up front instead of a sparse file.
    pub preallocate: bool,
}

/// Validates CreateVolume parameters of local volumes (`backend: nfs` goes
/// to [`crate::nfs::params`]). Known keys: `backend` (`local`),
/// `preallocate` (`true`/`false`); keys under `csi.storage.k8s.io/` are
/// metadata the sidecars add and are ignored. Anything else is refused.
pub fn params(field: &str, map: &HashMap<String, String>) -> Result<Params> {
    let mut p = Params::default();
    for (k, v) in map {
        match k.as_str() {
            "backend" => {
                if v != "local" {
                    return Err(Error::invalid(
                        format!("{field}[backend]"),
                        format!("{v:?} is not an available backend (local, nfs)"),
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
            k if k.starts_with("csi.storage.k8s.io/") => {}
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

/// Parameters with sidecar metadata keys removed, sorted: what identifies a
/// volume's creation options for idempotency checks.
pub fn canonical_params(map: &HashMap<String, String>) -> String {
    let mut v: Vec<_> = map
        .iter()
        .filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/"))
        .collect();
    v.sort();
    serde_json::to_string(&v).unwrap_or_default()
}

/// Validates snapshot parameters: only sidecar metadata is accepted.
pub fn snapshot_params(field: &str, map: &HashMap<String, String>) -> Result<()> {
    for k in map.keys() {
        if !k.starts_with("csi.storage.k8s.io/") {
            return Err(Error::invalid(
                format!("{field}[{k}]"),
                "is not a known parameter",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_path_characters_are_refused() {
        for bad in ["../x", "a/b", "..", ".hidden", "a\\b", "x..y", "a b", ""] {
            assert!(id("volume_id", bad).is_err(), "{bad:?}");
        }
        for good in ["local:n1:0123abcd", "reallyfakevolumeid", "id"] {
            assert!(id("volume_id", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn paths_are_absolute_and_stay_out_of_driver_dirs() {
        let pool = Path::new("/var/lib/pool");
        assert!(abs_path("target_path", "rel/x", &[pool]).is_err());
        assert!(abs_path("target_path", "/a/../b", &[pool]).is_err());
        assert!(abs_path("target_path", "/", &[pool]).is_err());
        assert!(abs_path("target_path", "/var/lib/pool/v", &[pool]).is_err());
        assert!(abs_path("target_path", "/var/lib", &[pool]).is_err());
        // A path through a symlinked directory resolves to the real place.
        let d = std::env::temp_dir().join(format!("berth-validate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("real")).unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
        let got = abs_path(
            "target_path",
            &d.join("link/vol/mount").display().to_string(),
            &[pool],
        )
        .unwrap();
        assert_eq!(
            got,
            std::fs::canonicalize(d.join("real"))
                .unwrap()
                .join("vol/mount")
        );
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(
            abs_path("target_path", "/mnt//x/./y", &[pool]).unwrap(),
            PathBuf::from("/mnt/x/y")
        );
    }

    #[test]
    fn ranges() {
        assert!(range(
            "capacity_range",
            Some(&CapacityRange {
                required_bytes: -1,
                limit_bytes: 0
            })
        )
        .is_err());
        assert!(range(
            "capacity_range",
            Some(&CapacityRange {
                required_bytes: 10,
                limit_bytes: 5
            })
        )
        .is_err());
        let r = range(
            "capacity_range",
            Some(&CapacityRange {
                required_bytes: 10,
                limit_bytes: 0,
            }),
        )
        .unwrap();
        assert_eq!((r.required, r.limit), (Some(10), None));
    }

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
