//! NFS volume and snapshot ids. An id carries everything later calls need
//! (server, export, subdirectory, delete policy), so DeleteVolume or
//! NodePublishVolume on any node work without a lookup in our records.
//!
//! Layout: `nfs#<server>#<share>#<subdir>#<onDelete>` and
//! `nfssnap#<server>#<share>#<source subdir>#<archive file>`. Share and
//! subdirectory are percent-encoded (anything but `[A-Za-z0-9_-]`), so an id
//! never holds `/`, `..` or whitespace and passes the generic id checks.

use crate::error::{Error, Result};
use crate::validate::MAX_ID_LEN;

/// Directory on each export that holds snapshot archives.
pub const SNAPSHOT_DIR: &str = ".berth-snapshots";

/// Prefix of NFS volume ids.
pub const VOLUME_PREFIX: &str = "nfs#";
/// Prefix of NFS snapshot ids.
pub const SNAPSHOT_PREFIX: &str = "nfssnap#";

/// What DeleteVolume does with the subdirectory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDelete {
    /// Remove it and everything in it.
    Delete,
    /// Leave it as it is.
    Retain,
    /// Rename it to `archived-<name>` next to where it was.
    Archive,
}

impl OnDelete {
    /// Parses the StorageClass value.
    pub fn parse(s: &str) -> Option<OnDelete> {
        match s {
            "delete" => Some(OnDelete::Delete),
            "retain" => Some(OnDelete::Retain),
            "archive" => Some(OnDelete::Archive),
            _ => None,
        }
    }

    fn code(self) -> &'static str {
        match self {
            OnDelete::Delete => "d",
            OnDelete::Retain => "r",
            OnDelete::Archive => "a",
        }
    }

    fn from_code(s: &str) -> Option<OnDelete> {
        match s {
            "d" => Some(OnDelete::Delete),
            "r" => Some(OnDelete::Retain),
            "a" => Some(OnDelete::Archive),
            _ => None,
        }
    }

    /// The StorageClass spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnDelete::Delete => "delete",
            OnDelete::Retain => "retain",
            OnDelete::Archive => "archive",
        }
    }
}

/// An NFS volume: a subdirectory of an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeId {
    /// Host name or IP address of the server.
    pub server: String,
    /// Absolute export path, no trailing `/`.
    pub share: String,
    /// Path below the export, relative, `/`-separated, no `.`/`..`.
    pub subdir: String,
    /// Delete policy.
    pub on_delete: OnDelete,
}

/// An NFS snapshot: an archive file on the export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotId {
    /// Host name or IP address of the server.
    pub server: String,
    /// Absolute export path.
    pub share: String,
    /// Subdirectory of the volume the snapshot was taken of.
    pub source_subdir: String,
    /// File name of the archive in the snapshot directory.
    pub file: String,
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Checks a server name: a DNS name, an IPv4 address, or an IPv6 address
/// (bare or in brackets). Returns the reason when it is not one.
pub fn check_server(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() {
        return Err("is required".into());
    }
    if s.len() > 253 {
        return Err("is longer than 253 characters".into());
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a host name or IP address"))
    }
}

/// Normalises an export path: absolute, no `.`/`..`/empty components, no
/// trailing `/` (except the root export `/`).
pub fn normalise_share(s: &str) -> std::result::Result<String, String> {
    if s.is_empty() {
        return Err("is required".into());
    }
    if !s.starts_with('/') {
        return Err(format!("{s:?} is not an absolute export path"));
    }
    let mut parts = Vec::new();
    for c in s.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return Err(format!("{s:?} must not contain '.' or '..' components"));
        }
        parts.push(c);
    }
    check_chars(s)?;
    Ok(format!("/{}", parts.join("/")))
}

/// Normalises a subdirectory: relative, no `.`/`..`/empty components.
pub fn normalise_subdir(s: &str) -> std::result::Result<String, String> {
    if s.starts_with('/') {
        return Err(format!("{s:?} must be relative to the export"));
    }
    let mut parts = Vec::new();
    for c in s.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return Err(format!("{s:?} must not contain '.' or '..' components"));
        }
        if c.len() > 255 {
            return Err(format!("{s:?} has a component longer than 255 bytes"));
        }
        parts.push(c);
    }
    if parts.is_empty() {
        return Err("must name a subdirectory (it is empty)".into());
    }
    check_chars(s)?;
    Ok(parts.join("/"))
}

fn check_chars(s: &str) -> std::result::Result<(), String> {
    if s.chars().any(|c| c.is_control()) {
        return Err(format!("{s:?} contains a control character"));
    }
    Ok(())
}

fn fields<'a>(field: &str, id: &'a str, prefix: &str, n: usize) -> Result<Vec<&'a str>> {
    let bad = |why: &str| Error::invalid(field, format!("{id:?} is not a valid NFS id: {why}"));
    if id.len() > MAX_ID_LEN {
        return Err(bad("too long"));
    }
    let rest = id.strip_prefix(prefix).ok_or_else(|| bad("wrong prefix"))?;
    let f: Vec<&str> = rest.split('#').collect();
    if f.len() != n {
        return Err(bad(&format!("expected {n} fields after {prefix:?}")));
    }
    Ok(f)
}

impl VolumeId {
    /// The id string.
    pub fn encode(&self) -> String {
        format!(
            "{VOLUME_PREFIX}{}#{}#{}#{}",
            self.server,
            encode(&self.share),
            encode(&self.subdir),
            self.on_delete.code()
        )
    }

    /// Parses an id that starts with [`VOLUME_PREFIX`]; INVALID_ARGUMENT
    /// naming `field` when it does not parse.
    pub fn parse(field: &str, id: &str) -> Result<VolumeId> {
        let f = fields(field, id, VOLUME_PREFIX, 4)?;
        let bad =
            |why: String| Error::invalid(field, format!("{id:?} is not a valid NFS id: {why}"));
        check_server(f[0]).map_err(|e| bad(format!("server {e}")))?;
        let share = decode(f[1]).ok_or_else(|| bad("bad share encoding".into()))?;
        let subdir = decode(f[2]).ok_or_else(|| bad("bad subdirectory encoding".into()))?;
        let share_n = normalise_share(&share).map_err(|e| bad(format!("share {e}")))?;
        let subdir_n = normalise_subdir(&subdir).map_err(|e| bad(format!("subdirectory {e}")))?;
        if share_n != share || subdir_n != subdir {
            return Err(bad("not in normal form".into()));
        }
        let on_delete =
            OnDelete::from_code(f[3]).ok_or_else(|| bad("unknown delete policy".into()))?;
        Ok(VolumeId {
            server: f[0].to_string(),
            share,
            subdir,
            on_delete,
        })
    }

    /// `server:/share/subdir`, the NFS mount source (IPv6 in brackets).
    pub fn mount_source(&self) -> String {
        let server = if self.server.contains(':') && !self.server.starts_with('[') {
            format!("[{}]", self.server)
        } else {
            self.server.clone()
        };
        let share = self.share.trim_end_matches('/');
        format!("{server}:{share}/{}", self.subdir)
    }
}

impl SnapshotId {
    /// The id string.
    pub fn encode(&self) -> String {
        format!(
            "{SNAPSHOT_PREFIX}{}#{}#{}#{}",
            self.server,
            encode(&self.share),
            encode(&self.source_subdir),
            encode(&self.file)
        )
    }

    /// Parses an id that starts with [`SNAPSHOT_PREFIX`].
    pub fn parse(field: &str, id: &str) -> Result<SnapshotId> {
        let f = fields(field, id, SNAPSHOT_PREFIX, 4)?;
        let bad = |why: String| {
            Error::invalid(
                field,
                format!("{id:?} is not a valid NFS snapshot id: {why}"),
            )
        };
        check_server(f[0]).map_err(|e| bad(format!("server {e}")))?;
        let share = decode(f[1]).ok_or_else(|| bad("bad share encoding".into()))?;
        let source_subdir = decode(f[2]).ok_or_else(|| bad("bad subdirectory encoding".into()))?;
        let file = decode(f[3]).ok_or_else(|| bad("bad file encoding".into()))?;
        normalise_share(&share).map_err(|e| bad(format!("share {e}")))?;
        normalise_subdir(&source_subdir).map_err(|e| bad(format!("subdirectory {e}")))?;
        if file.is_empty() || file.contains('/') || file.starts_with('.') || !file.ends_with(".tar")
        {
            return Err(bad("bad archive name".into()));
        }
        Ok(SnapshotId {
            server: f[0].to_string(),
            share,
            source_subdir,
            file,
        })
    }
}

/// How much longer a snapshot id is than its volume's: the prefix, and the
/// encoded archive name (`s-<16 hex>.tar`) where the volume id has its
/// policy.
fn snapshot_id_extra() -> usize {
    SNAPSHOT_PREFIX.len() - VOLUME_PREFIX.len() + encode("s-0123456789abcdef.tar").len() - 1
}

/// A subdirectory for a volume named `name` whose name, used as it is,
/// makes the id longer than [`MAX_ID_LEN`]: as much of the name as fits
/// (characters other than `[A-Za-z0-9_-]` become `_`, so the id holds it
/// unencoded), `-` and a digest of the whole name. The same name gives the
/// same subdirectory. It is kept short enough for the volume's snapshot ids
/// to fit too where the export leaves room; `None` when not even the digest
/// fits.
pub fn short_subdir(server: &str, share: &str, on_delete: OnDelete, name: &str) -> Option<String> {
    let base = VolumeId {
        server: server.to_string(),
        share: share.to_string(),
        subdir: String::new(),
        on_delete,
    }
    .encode()
    .len();
    let hash = berth_common::digest(&[name.as_bytes()]);
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    [MAX_ID_LEN.saturating_sub(snapshot_id_extra()), MAX_ID_LEN]
        .into_iter()
        .find_map(|room| {
            let keep = room.checked_sub(base + hash.len())?;
            Some(match keep.saturating_sub(1).min(clean.len()) {
                0 => hash.clone(),
                n => format!("{}-{hash}", &clean[..n]),
            })
        })
}

/// Whether an id belongs to the NFS backend (by prefix).
pub fn is_volume(id: &str) -> bool {
    id.starts_with(VOLUME_PREFIX)
}

/// Whether a snapshot id belongs to the NFS backend.
pub fn is_snapshot(id: &str) -> bool {
    id.starts_with(SNAPSHOT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_round_trip_and_hold_no_path_characters() {
        let v = VolumeId {
            server: "10.0.2.2".into(),
            share: "/export/k8s".into(),
            subdir: "ns1/pvc.data".into(),
            on_delete: OnDelete::Archive,
        };
        let s = v.encode();
        assert_eq!(s, "nfs#10.0.2.2#%2Fexport%2Fk8s#ns1%2Fpvc%2Edata#a");
        crate::validate::id("volume_id", &s).expect("passes the generic id check");
        assert_eq!(VolumeId::parse("volume_id", &s).expect("parses"), v);
        assert_eq!(v.mount_source(), "10.0.2.2:/export/k8s/ns1/pvc.data");
        let v6 = VolumeId {
            server: "fd00::2".into(),
            ..v
        };
        assert_eq!(v6.mount_source(), "[fd00::2]:/export/k8s/ns1/pvc.data");
    }

    #[test]
    fn long_names_get_a_short_subdir_that_fits() {
        let name = "x".repeat(128);
        let sub = short_subdir("10.0.2.2", "/export", OnDelete::Delete, &name).expect("fits");
        assert_eq!(
            sub,
            short_subdir("10.0.2.2", "/export", OnDelete::Delete, &name).expect("fits"),
            "deterministic"
        );
        assert!(sub.starts_with("xxx") && sub.ends_with(&berth_common::digest(&[name.as_bytes()])));
        let v = VolumeId {
            server: "10.0.2.2".into(),
            share: "/export".into(),
            subdir: sub.clone(),
            on_delete: OnDelete::Delete,
        };
        let id = v.encode();
        assert!(id.len() <= MAX_ID_LEN, "{} bytes", id.len());
        assert_eq!(VolumeId::parse("volume_id", &id).expect("decodes"), v);
        let snap = SnapshotId {
            server: v.server.clone(),
            share: v.share.clone(),
            source_subdir: sub,
            file: format!("s-{}.tar", berth_common::digest(&[b"snap"])),
        };
        assert!(snap.encode().len() <= MAX_ID_LEN, "snapshot ids fit too");
        // Names differing past the kept prefix get different directories;
        // other characters become `_`.
        let other = format!("{}y", "x".repeat(127));
        assert_ne!(
            short_subdir("10.0.2.2", "/export", OnDelete::Delete, &other),
            short_subdir("10.0.2.2", "/export", OnDelete::Delete, &name)
        );
        let dotted = short_subdir("s", "/e", OnDelete::Delete, &"a.b/".repeat(40)).expect("fits");
        assert!(dotted.starts_with("a_b_a_b_"), "{dotted}");
        // An export path that leaves no room for the digest.
        assert_eq!(
            short_subdir(
                "s",
                &format!("/{}", "e".repeat(120)),
                OnDelete::Delete,
                &name
            ),
            None
        );
    }

    #[test]
    fn malformed_ids_are_invalid_arguments() {
        for bad in [
            "nfs#",
            "nfs#srv#%2Fexport#sub",
            "nfs#srv#%2Fexport#sub#x",
            "nfs#bad host#%2Fexport#sub#d",
            "nfs#srv#export#sub#d",
            "nfs#srv#%2Fexport#%2E%2E#d",
            "nfs#srv#%2Fexport#a%2F%2E%2E%2Fb#d",
            "nfs#srv#%2Fexport#%2Fabs#d",
            "nfs#srv#%2Fexport#%ZZ#d",
            "nfs#srv#%2Fexport%2F#sub#d",
        ] {
            let e = VolumeId::parse("volume_id", bad).expect_err(bad);
            assert!(matches!(e, Error::InvalidArgument { .. }), "{bad}: {e}");
            assert!(e.to_string().starts_with("volume_id:"), "{e}");
        }
    }

    #[test]
    fn snapshot_ids_round_trip() {
        let s = SnapshotId {
            server: "nfs.example.com".into(),
            share: "/".into(),
            source_subdir: "pvc-1".into(),
            file: "snap-1-0a0b0c0d.tar".into(),
        };
        let e = s.encode();
        assert_eq!(SnapshotId::parse("snapshot_id", &e).expect("parses"), s);
        assert!(SnapshotId::parse("snapshot_id", "nfssnap#h#%2F#p#..%2Fx.tar").is_err());
    }

    #[test]
    fn shares_and_subdirs_are_normalised() {
        assert_eq!(normalise_share("/export//a/").as_deref(), Ok("/export/a"));
        assert_eq!(normalise_share("/").as_deref(), Ok("/"));
        assert!(normalise_share("export").is_err());
        assert!(normalise_share("/a/../b").is_err());
        assert_eq!(normalise_subdir("a//b/").as_deref(), Ok("a/b"));
        assert!(normalise_subdir("a/../b").is_err());
        assert!(normalise_subdir("/a").is_err());
        assert!(normalise_subdir("").is_err());
        assert!(check_server("10.0.2.2").is_ok());
        assert!(check_server("[fd00::1]").is_ok());
        assert!(check_server("nfs-1.example").is_ok());
        assert!(check_server("a#b").is_err());
        assert!(check_server("a..b").is_err());
    }
}
