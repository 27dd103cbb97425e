//! Reads a resolv.conf into the result's `dns` section, as the reference does.

use std::path::Path;

use cni_core::Dns;

use crate::error::IpamError;

pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.nameservers.extend(words.next().map(String::from)),
            Some("domain") => {
                if let Some(d) = words.next() {
                    dns.domain = d.to_string();
                }
            }
            Some("search") => dns.search = words.map(String::from).collect(),
            Some("options") => dns.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    dns
}

pub fn read_resolv_conf(path: &Path) -> Result<Dns, IpamError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        IpamError::config(
            "ipam.resolvConf",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    Ok(parse_resolv_conf(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_directive() {
        let d = parse_resolv_conf(
            "# comment\nnameserver 10.0.0.53\nnameserver fd00::53 ; x\ndomain example.org\nsearch a.example b.example\noptions ndots:5 edns0\nbogus line\n",
        );
        assert_eq!(d.nameservers, ["10.0.0.53", "fd00::53"]);
        assert_eq!(d.domain, "example.org");
        assert_eq!(d.search, ["a.example", "b.example"]);
        assert_eq!(d.options, ["ndots:5", "edns0"]);
    }
}
