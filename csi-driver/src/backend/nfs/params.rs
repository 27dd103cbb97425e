//! StorageClass parameters of NFS volumes (`backend: nfs`) and the NFS
//! mount options a node accepts.

use std::collections::HashMap;

use super::id::{
    check_server, normalise_share, normalise_subdir, short_subdir, OnDelete, VolumeId, SNAPSHOT_DIR,
};
use crate::error::{Error, Result};

/// Sidecar keys that fill the `subDir` templates.
const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
const PV_NAME: &str = "csi.storage.k8s.io/pv/name";

/// Validated CreateVolume parameters of an NFS volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfsParams {
    /// Server host name or address.
    pub server: String,
    /// Export path (normalised).
    pub share: String,
    /// Subdirectory for this volume (templates filled, normalised).
    pub subdir: String,
    /// Options for the node's mount, as given (comma-separated).
    pub mount_options: Vec<String>,
    /// Mode of the subdirectory, when set.
    pub mount_permissions: Option<u32>,
    /// What DeleteVolume does.
    pub on_delete: OnDelete,
}

/// Whether CreateVolume parameters select the NFS backend.
pub fn selects_nfs(map: &HashMap<String, String>) -> bool {
    map.get("backend").is_some_and(|b| b == "nfs")
}

/// Fills `${pvc.metadata.name}`, `${pvc.metadata.namespace}` and
/// `${pv.metadata.name}` from the sidecar's parameters.
fn fill_template(field: &str, tpl: &str, map: &HashMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = tpl;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| Error::invalid(field, "has an unterminated ${...}"))?;
        let key = match &after[..end] {
            "pvc.metadata.name" => PVC_NAME,
            "pvc.metadata.namespace" => PVC_NAMESPACE,
            "pv.metadata.name" => PV_NAME,
            other => {
                return Err(Error::invalid(
                    field,
                    format!(
                        "${{{other}}} is not a known template (pvc.metadata.name, pvc.metadata.namespace, pv.metadata.name)"
                    ),
                ))
            }
        };
        let value = map.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
            Error::invalid(
                field,
                format!(
                    "uses ${{{}}} but the request has no {key} parameter (run the provisioner with --extra-create-metadata)",
                    &after[..end]
                ),
            )
        })?;
        if value.contains('/') || value == "." || value == ".." {
            return Err(Error::invalid(
                field,
                format!("{key} = {value:?} cannot be used in a path"),
            ));
        }
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Option names (before any `=`) the NFS client takes besides the generic
/// mount flags ([`crate::validate::VFS_MOUNT_FLAGS`]). Everything else is
/// refused so a typo is INVALID_ARGUMENT, not a mount failure on a node.
const NFS_OPTIONS: &[&str] = &[
    "vers",
    "nfsvers",
    "minorversion",
    "proto",
    "port",
    "hard",
    "soft",
    "softerr",
    "timeo",
    "retrans",
    "rsize",
    "wsize",
    "ac",
    "noac",
    "actimeo",
    "acregmin",
    "acregmax",
    "acdirmin",
    "acdirmax",
    "lookupcache",
    "nconnect",
    "max_connect",
    "sec",
    "lock",
    "nolock",
    "local_lock",
    "noresvport",
    "resvport",
    "fsc",
    "nofsc",
    "cto",
    "nocto",
    "sharecache",
    "nosharecache",
    "intr",
    "nointr",
    "rdirplus",
    "nordirplus",
    "mountport",
    "mountproto",
    "mountvers",
    "write",
];

/// Options that would redirect the mount to another server or address;
/// the server comes from the volume id only.
const REFUSED: &[&str] = &["addr", "clientaddr", "mountaddr"];

/// Validates one NFS mount option; `field` names where it came from.
pub fn check_mount_option(field: &str, opt: &str) -> Result<()> {
    let name = opt.split('=').next().unwrap_or_default();
    if opt.is_empty()
        || opt.len() > 256
        || !opt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=._:-/".contains(&b))
    {
        return Err(Error::invalid(
            field,
            format!("{opt:?} is not a valid mount option"),
        ));
    }
    if REFUSED.contains(&name) {
        return Err(Error::invalid(
            field,
            format!("{name} cannot be set: the server address comes from the volume"),
        ));
    }
    if !NFS_OPTIONS.contains(&name) && !crate::validate::VFS_MOUNT_FLAGS.contains(&opt) {
        return Err(Error::invalid(
            field,
            format!("{opt:?} is not an NFS mount option this driver supports"),
        ));
    }
    Ok(())
}

/// Splits and validates a comma-separated option list.
pub fn parse_mount_options(field: &str, s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, o) in s
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .enumerate()
    {
        check_mount_option(&format!("{field}[{i}]"), o)?;
        out.push(o.to_string());
    }
    Ok(out)
}

/// Parses an octal mode such as `0777` or `2775`.
pub fn parse_mode(field: &str, s: &str) -> Result<u32> {
    let digits = s.trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && m <= 0o7777 => Ok(m),
        _ => Err(Error::invalid(
            field,
            format!("{s:?} is not an octal mode (e.g. 0777)"),
        )),
    }
}

/// Validates the parameters of an NFS CreateVolume. `volume_name` is the
/// default subdirectory.
pub fn parse(field: &str, map: &HashMap<String, String>, volume_name: &str) -> Result<NfsParams> {
    let f = |k: &str| format!("{field}[{k}]");
    let mut server = None;
    let mut share = None;
    let mut subdir_tpl = None;
    let mut mount_options = Vec::new();
    let mut mount_permissions = None;
    let mut on_delete = OnDelete::Delete;
    for (k, v) in map {
        match k.as_str() {
            "backend" => {}
            "server" => {
                check_server(v).map_err(|e| Error::invalid(f("server"), e))?;
                server = Some(v.clone());
            }
            "share" => {
                share = Some(normalise_share(v).map_err(|e| Error::invalid(f("share"), e))?);
            }
            "subDir" => subdir_tpl = Some(v.clone()),
            "mountOptions" => mount_options = parse_mount_options(&f("mountOptions"), v)?,
            "mountPermissions" => mount_permissions = Some(parse_mode(&f("mountPermissions"), v)?),
            "onDelete" => {
                on_delete = OnDelete::parse(v).ok_or_else(|| {
                    Error::invalid(
                        f("onDelete"),
                        format!("{v:?} is not one of delete, retain, archive"),
                    )
                })?
            }
            k if crate::validate::is_sidecar_key(k) => {}
            other => {
                return Err(Error::invalid(
                    f(other),
                    "is not a known parameter of the nfs backend (server, share, subDir, mountOptions, mountPermissions, onDelete)",
                ))
            }
        }
    }
    let server = server.ok_or_else(|| Error::missing(f("server")))?;
    let share = share.ok_or_else(|| Error::missing(f("share")))?;
    let raw = match &subdir_tpl {
        Some(t) => fill_template(&f("subDir"), t, map)?,
        None => volume_name.to_string(),
    };
    let subdir = normalise_subdir(&raw).map_err(|e| Error::invalid(f("subDir"), e))?;
    if subdir
        .split('/')
        .any(|c| c.starts_with("archived-") || c == SNAPSHOT_DIR)
    {
        return Err(Error::invalid(
            f("subDir"),
            format!("{subdir:?} uses a name the driver keeps for archives and snapshots"),
        ));
    }
    // A subdirectory named after a long volume name may make the id too
    // long; any legal name must give a valid id, so it gets a shorter one.
    // (An explicit subDir that is too long stays an error of CreateVolume.)
    let subdir = match subdir_tpl {
        None if VolumeId {
            server: server.clone(),
            share: share.clone(),
            subdir: subdir.clone(),
            on_delete,
        }
        .encode()
        .len()
            > crate::validate::MAX_ID_LEN =>
        {
            short_subdir(&server, &share, on_delete, volume_name).unwrap_or(subdir)
        }
        _ => subdir,
    };
    Ok(NfsParams {
        server,
        share,
        subdir,
        mount_options,
        mount_permissions,
        on_delete,
    })
}

/// Validates the export part of NFS parameters and the rest as far as it
/// can be without a volume: GetCapacity and ValidateVolumeCapabilities get
/// the StorageClass parameters without the per-volume metadata that
/// `subDir` templates use.
pub fn parse_export(field: &str, map: &HashMap<String, String>) -> Result<(String, String)> {
    let mut m = map.clone();
    m.remove("subDir");
    let p = parse(field, &m, "export-check")?;
    Ok((p.server, p.share))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_templates() {
        let p = parse(
            "parameters",
            &map(&[
                ("backend", "nfs"),
                ("server", "10.0.2.2"),
                ("share", "/export/"),
            ]),
            "pvc-1",
        )
        .expect("valid");
        assert_eq!(p.subdir, "pvc-1");
        assert_eq!(p.share, "/export");
        assert_eq!(p.on_delete, OnDelete::Delete);
        let p = parse(
            "parameters",
            &map(&[
                ("backend", "nfs"),
                ("server", "srv"),
                ("share", "/e"),
                ("subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}-x"),
                (PVC_NAME, "data"),
                (PVC_NAMESPACE, "team"),
                ("mountPermissions", "0775"),
                ("mountOptions", "nfsvers=4.2, hard,nconnect=4"),
                ("onDelete", "archive"),
            ]),
            "pvc-1",
        )
        .expect("valid");
        assert_eq!(p.subdir, "team/data-x");
        assert_eq!(p.mount_permissions, Some(0o775));
        assert_eq!(p.mount_options, vec!["nfsvers=4.2", "hard", "nconnect=4"]);
        assert_eq!(p.on_delete, OnDelete::Archive);
    }

    #[test]
    fn a_long_volume_name_gets_a_subdir_that_fits_an_explicit_one_does_not() {
        let m = map(&[
            ("backend", "nfs"),
            ("server", "10.0.2.2"),
            ("share", "/export"),
        ]);
        let name = "n".repeat(128);
        let p = parse("parameters", &m, &name).expect("valid");
        let id = VolumeId {
            server: p.server.clone(),
            share: p.share.clone(),
            subdir: p.subdir.clone(),
            on_delete: p.on_delete,
        }
        .encode();
        assert!(id.len() <= crate::validate::MAX_ID_LEN, "{id}");
        assert_eq!(
            parse("parameters", &m, &name).expect("valid"),
            p,
            "same name, same subdir"
        );
        // Short names are used as they are.
        assert_eq!(
            parse("parameters", &m, "pvc-1").expect("valid").subdir,
            "pvc-1"
        );
        // An explicit subDir is never rewritten.
        let mut m = m;
        m.insert("subDir".into(), name.clone());
        assert_eq!(parse("parameters", &m, "v").expect("valid").subdir, name);
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let base = [("backend", "nfs"), ("server", "srv"), ("share", "/e")];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("backend", "nfs"), ("share", "/e")], "parameters[server]"),
            (
                &[("backend", "nfs"), ("server", "srv")],
                "parameters[share]",
            ),
            (&[("subDir", "../x")], "parameters[subDir]"),
            (&[("subDir", "a/../../x")], "parameters[subDir]"),
            (&[("subDir", "/abs")], "parameters[subDir]"),
            (&[("subDir", "${pvc.metadata.name}")], "parameters[subDir]"),
            (&[("subDir", "${pvc.uid}")], "parameters[subDir]"),
            (&[("onDelete", "shred")], "parameters[onDelete]"),
            (
                &[("mountPermissions", "999")],
                "parameters[mountPermissions]",
            ),
            (
                &[("mountOptions", "vers=4.1,addr=1.2.3.4")],
                "parameters[mountOptions][1]",
            ),
            (&[("mountOptions", "bogus")], "parameters[mountOptions][0]"),
            (&[("preallocate", "true")], "parameters[preallocate]"),
            (&[("share", "relative")], "parameters[share]"),
            (&[("server", "bad host")], "parameters[server]"),
        ];
        for (extra, field) in cases {
            let mut m = map(&base);
            if extra.iter().any(|(k, _)| *k == "backend") {
                m = map(extra);
            } else {
                m.extend(map(extra));
            }
            let e = parse("parameters", &m, "vol").expect_err(field);
            assert!(e.to_string().starts_with(field), "{field}: {e}");
        }
    }
}
