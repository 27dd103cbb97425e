//! Generic CSI argument checks: names and ids, CO paths, capacity ranges,
//! pagination, the shape of a capability, sidecar parameter keys. Nothing
//! here knows a backend (each one's capability rules come in through
//! [`CapabilityRules`]) or touches the system beyond resolving paths: every
//! request is checked with these before any device is used.

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

/// [`abs_path`] (`resolve`) or [`abs_path_lexical`] (not), as a backend's
/// rules choose.
pub fn abs_path_with(
    field: &str,
    value: &str,
    forbidden: &[&Path],
    resolve: bool,
) -> Result<PathBuf> {
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
pub const VFS_MOUNT_FLAGS: &[&str] = &[
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

/// The CSI limit on all mount flags of a capability together.
const MAX_MOUNT_FLAGS_LEN: usize = 4096;

/// INVALID_ARGUMENT on `{field}.mount.mount_flags` when the flags together
/// exceed 4 KiB.
pub fn mount_flags_size(field: &str, flags: &[String]) -> Result<()> {
    if flags.iter().map(String::len).sum::<usize>() > MAX_MOUNT_FLAGS_LEN {
        return Err(Error::invalid(
            format!("{field}.mount.mount_flags"),
            "exceed 4 KiB",
        ));
    }
    Ok(())
}

/// What one storage backend accepts in a capability. [`capability`] checks
/// the generic shape around these rules.
pub trait CapabilityRules {
    /// Whether an access mode (never `UNKNOWN`) is read-only, or why the
    /// backend refuses it.
    fn access_mode(&self, mode: AccessMode) -> std::result::Result<bool, String>;

    /// The access an access type asks for (block, or a filesystem with
    /// type and flags), or INVALID_ARGUMENT naming the field below `field`
    /// (e.g. `{field}.mount.fs_type`).
    fn access_type(&self, field: &str, access_type: &AccessType) -> Result<Access>;
}

/// Validates one capability; `field` is e.g. `volume_capabilities[0]`. The
/// shape (access mode and type present, mode known, no mount group) is
/// checked here; `rules` say which modes, types, filesystems and flags the
/// backend accepts.
pub fn capability<R: CapabilityRules + ?Sized>(
    field: &str,
    cap: &VolumeCapability,
    rules: &R,
) -> Result<Capability> {
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
    if mode == AccessMode::Unknown {
        return Err(Error::missing(format!("{mode_field}.mode")));
    }
    let read_only_mode = rules
        .access_mode(mode)
        .map_err(|why| Error::invalid(format!("{mode_field}.mode"), why))?;
    let access_type = cap.access_type.as_ref().ok_or_else(|| {
        Error::invalid(
            format!("{field}.access_type"),
            "one of block or mount is required",
        )
    })?;
    let access = rules.access_type(field, access_type)?;
    if let AccessType::Mount(m) = access_type {
        if !m.volume_mount_group.is_empty() {
            return Err(Error::invalid(
                format!("{field}.mount.volume_mount_group"),
                "is not supported (no VOLUME_MOUNT_GROUP capability)",
            ));
        }
    }
    Ok(Capability {
        access,
        read_only_mode,
        mode,
    })
}

/// Validates a required list of capabilities.
pub fn capabilities<R: CapabilityRules + ?Sized>(
    field: &str,
    caps: &[VolumeCapability],
    rules: &R,
) -> Result<Vec<Capability>> {
    if caps.is_empty() {
        return Err(Error::missing(field));
    }
    caps.iter()
        .enumerate()
        .map(|(i, c)| capability(&format!("{field}[{i}]"), c, rules))
        .collect()
}

/// What is wrong with each capability, as ValidateVolumeCapabilities
/// reports it (`volume_capabilities[i]...: reason`); `fits` adds a check of
/// a valid capability against the volume.
pub fn capability_problems<R: CapabilityRules + ?Sized>(
    caps: &[VolumeCapability],
    rules: &R,
    fits: impl Fn(&Capability) -> std::result::Result<(), String>,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for (i, c) in caps.iter().enumerate() {
        let field = format!("volume_capabilities[{i}]");
        match capability(&field, c, rules) {
            Err(Error::InvalidArgument { field, reason }) => {
                problems.push(format!("{field}: {reason}"))
            }
            Err(e) => return Err(e),
            Ok(cap) => {
                if let Err(why) = fits(&cap) {
                    problems.push(format!("{field}: {why}"));
                }
            }
        }
    }
    Ok(problems)
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

/// Decodes a pagination token this driver handed out (`t<seq>`); empty is
/// the start. Anything else is ABORTED, as the spec asks.
pub fn pagination_token(field: &str, token: &str) -> Result<i64> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix('t')
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            Error::Aborted(format!(
                "{field} {token:?} is not a token this driver handed out"
            ))
        })
}

/// A list call's `max_entries`: 0 means no limit; negative is refused.
pub fn max_entries(n: i32) -> Result<usize> {
    if n < 0 {
        return Err(Error::invalid("max_entries", "must not be negative"));
    }
    Ok(n as usize)
}

/// Whether a StorageClass key is one the sidecars add (metadata, ignored).
pub fn is_sidecar_key(key: &str) -> bool {
    key.starts_with("csi.storage.k8s.io/")
}

/// Parameters with sidecar metadata keys removed, sorted: what identifies a
/// volume's creation options for idempotency checks.
pub fn canonical_params(map: &HashMap<String, String>) -> String {
    let mut v: Vec<_> = map.iter().filter(|(k, _)| !is_sidecar_key(k)).collect();
    v.sort();
    serde_json::to_string(&v).unwrap_or_default()
}

/// Validates snapshot parameters: only sidecar metadata is accepted.
pub fn snapshot_params(field: &str, map: &HashMap<String, String>) -> Result<()> {
    for k in map.keys() {
        if !is_sidecar_key(k) {
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
    fn tokens() {
        assert_eq!(pagination_token("t", "").unwrap(), 0);
        assert_eq!(pagination_token("t", "t12").unwrap(), 12);
        assert!(matches!(
            pagination_token("t", "invalid-token"),
            Err(Error::Aborted(_))
        ));
        assert!(matches!(
            pagination_token("t", "12"),
            Err(Error::Aborted(_))
        ));
    }
}
