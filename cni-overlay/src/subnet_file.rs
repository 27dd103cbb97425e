//! `/run/berth/subnet.env`: what the node agent tells the CNI plugin about
//! this node's share of the cluster network. Written atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::error::OverlayError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetInfo {
    pub node: String,
    pub network: Ipv4Network,
    pub subnet: Ipv4Network,
    pub network6: Option<Ipv6Network>,
    pub subnet6: Option<Ipv6Network>,
    pub mtu: u32,
    pub vni: u32,
}

impl SubnetInfo {
    pub fn render(&self) -> String {
        let mut s = format!(
            "# written by berth-overlayd; read by the berth-overlay CNI plugin\nBERTH_NODE={}\nBERTH_NETWORK={}\nBERTH_SUBNET={}\nBERTH_MTU={}\nBERTH_VNI={}\n",
            self.node, self.network, self.subnet, self.mtu, self.vni
        );
        if let (Some(n6), Some(s6)) = (self.network6, self.subnet6) {
            s.push_str(&format!("BERTH_NETWORK6={n6}\nBERTH_SUBNET6={s6}\n"));
        }
        s
    }

    pub fn parse(text: &str, path: &Path) -> Result<SubnetInfo, OverlayError> {
        let kv: BTreeMap<&str, &str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect();
        let bad =
            |k: &str| OverlayError::Io(format!("{}: {k} is missing or invalid", path.display()));
        let get = |k: &str| kv.get(k).copied().ok_or_else(|| bad(k));
        Ok(SubnetInfo {
            node: get("BERTH_NODE").unwrap_or_default().to_string(),
            network: get("BERTH_NETWORK")?
                .parse()
                .map_err(|_| bad("BERTH_NETWORK"))?,
            subnet: get("BERTH_SUBNET")?
                .parse()
                .map_err(|_| bad("BERTH_SUBNET"))?,
            network6: kv.get("BERTH_NETWORK6").and_then(|v| v.parse().ok()),
            subnet6: kv.get("BERTH_SUBNET6").and_then(|v| v.parse().ok()),
            mtu: get("BERTH_MTU")?.parse().map_err(|_| bad("BERTH_MTU"))?,
            vni: get("BERTH_VNI")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
        })
    }

    pub fn read(path: &Path) -> Result<Option<SubnetInfo>, OverlayError> {
        match std::fs::read_to_string(path) {
            Ok(t) => SubnetInfo::parse(&t, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(OverlayError::Io(format!("{}: {e}", path.display()))),
        }
    }

    /// Temp file, fsync, rename: a reader sees the old file or the new one.
    pub fn write(&self, path: &Path) -> Result<(), OverlayError> {
        let io = |e: std::io::Error| OverlayError::Io(format!("writing {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(self.render().as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = SubnetInfo {
            node: "n1".into(),
            network: "10.244.0.0/16".parse().expect("n"),
            subnet: "10.244.3.0/24".parse().expect("n"),
            network6: Some("fd00:244::/56".parse().expect("n")),
            subnet6: Some("fd00:244:0:3::/64".parse().expect("n")),
            mtu: 1450,
            vni: 1,
        };
        let p = Path::new("/x");
        assert_eq!(SubnetInfo::parse(&s.render(), p).expect("parse"), s);
        assert!(SubnetInfo::parse("BERTH_NETWORK=10.0.0.0/8\n", p).is_err());
    }
}
