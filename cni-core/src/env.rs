//! The plugin's environment: CNI_COMMAND and friends, validated the way
//! runtimes expect.

use crate::error::CniError;

/// The operation a runtime asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(CniError::invalid_env(format!(
                    "CNI_COMMAND: unknown command {other:?} (expected ADD, DEL, CHECK, VERSION, GC or STATUS)"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }

    /// Whether the command acts on one attachment (and so needs a container
    /// id and an interface name).
    pub fn is_per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// Everything the runtime passed through the environment.
#[derive(Debug, Clone, Default)]
pub struct CmdEnv {
    pub container_id: String,
    /// Empty for DEL when the runtime no longer has a netns, and for GC/STATUS.
    pub netns: String,
    pub ifname: String,
    /// Raw `CNI_ARGS`.
    pub args: String,
    /// `CNI_PATH`, split on ':'.
    pub path: Vec<String>,
}

/// Reads and validates the environment for `cmd`. `get` abstracts
/// `std::env::var` so tests need not touch the process environment.
pub fn read_env(cmd: Command, get: &dyn Fn(&str) -> Option<String>) -> Result<CmdEnv, CniError> {
    let var = |name: &str| get(name).unwrap_or_default();
    let required: &[&str] = match cmd {
        Command::Add | Command::Check => {
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
        }
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
        Command::Version | Command::Gc | Command::Status => &[],
    };
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|n| var(n).is_empty())
        .collect();
    if !missing.is_empty() {
        return Err(CniError::invalid_env(format!(
            "required environment variable{} {} missing for {}",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            cmd.as_str()
        )));
    }
    let env = CmdEnv {
        container_id: var("CNI_CONTAINERID"),
        netns: var("CNI_NETNS"),
        ifname: var("CNI_IFNAME"),
        args: var("CNI_ARGS"),
        path: var("CNI_PATH")
            .split(':')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    };
    if cmd.is_per_attachment() {
        validate_container_id(&env.container_id)?;
        validate_ifname(&env.ifname)?;
    }
    if !env.args.is_empty() {
        parse_cni_args(&env.args)?;
    }
    Ok(env)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'
}

/// Container ids: a letter or digit, then letters, digits, `_`, `.`, `-`.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    match chars.next() {
        None => Err(CniError::invalid_env("CNI_CONTAINERID is empty")),
        Some(first) if first.is_ascii_alphanumeric() && chars.all(is_name_char) => Ok(()),
        Some(_) => Err(CniError::invalid_env(format!(
            "CNI_CONTAINERID {id:?} has invalid characters: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        ))),
    }
}

/// Linux interface names: 1-15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::invalid_env("CNI_IFNAME is empty"));
    }
    if name.len() > 15 {
        return Err(CniError::invalid_env(format!(
            "CNI_IFNAME {name:?} is too long: Linux interface names have at most 15 bytes"
        )));
    }
    if name == "." || name == ".." {
        return Err(CniError::invalid_env(format!(
            "CNI_IFNAME {name:?} is not a valid interface name"
        )));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(CniError::invalid_env(format!(
            "CNI_IFNAME {name:?} contains '/', ':' or whitespace"
        )));
    }
    Ok(())
}

/// Network names follow the same rule as container ids.
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    match chars.next() {
        None => Err(CniError::invalid_config("name: the network name is missing")),
        Some(first) if first.is_ascii_alphanumeric() && chars.all(is_name_char) => Ok(()),
        Some(_) => Err(CniError::invalid_config(format!(
            "name: {name:?} is not a valid network name: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        ))),
    }
}

/// Splits `CNI_ARGS` (`K=V;K2=V2`) into pairs. Unknown keys are kept for the
/// plugin to ignore: kubelet and other runtimes add their own.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
            _ => {
                return Err(CniError::invalid_env(format!(
                    "CNI_ARGS: {pair:?} is not a KEY=VALUE pair"
                )))
            }
        }
    }
    Ok(out)
}

/// The value of one key in `CNI_ARGS`, if present.
pub fn cni_arg(raw: &str, key: &str) -> Option<String> {
    parse_cni_args(raw)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn add_needs_everything_and_names_what_is_missing() {
        let get = env_of(&[("CNI_CONTAINERID", "abc"), ("CNI_PATH", "/opt/cni/bin")]);
        let e = read_env(Command::Add, &get).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(
            e.msg.contains("CNI_NETNS") && e.msg.contains("CNI_IFNAME"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn del_does_not_need_a_netns() {
        let get = env_of(&[
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x:/y"),
        ]);
        let env = read_env(Command::Del, &get).expect("valid");
        assert_eq!(env.path, vec!["/x", "/y"]);
        assert!(env.netns.is_empty());
    }

    #[test]
    fn gc_and_status_need_only_the_command() {
        let get = env_of(&[]);
        assert!(read_env(Command::Gc, &get).is_ok());
        assert!(read_env(Command::Status, &get).is_ok());
    }

    #[test]
    fn container_id_rules() {
        assert!(validate_container_id("a1_b.c-d").is_ok());
        assert_eq!(validate_container_id("").unwrap_err().code, 4);
        assert_eq!(validate_container_id("-x").unwrap_err().code, 4);
        assert_eq!(validate_container_id("a/b").unwrap_err().code, 4);
    }

    #[test]
    fn ifname_rules() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        for bad in ["", "abcdefghijklmnop", ".", "..", "a/b", "a:b", "a b"] {
            let e = validate_ifname(bad).unwrap_err();
            assert_eq!(e.code, 4, "{bad}");
            assert!(e.msg.contains("CNI_IFNAME"));
        }
    }

    #[test]
    fn network_name_rules() {
        assert!(validate_network_name("k8s-pod-network").is_ok());
        assert_eq!(validate_network_name("").unwrap_err().code, 7);
        assert_eq!(validate_network_name("bad name").unwrap_err().code, 7);
    }

    #[test]
    fn cni_args_parsing() {
        let v = parse_cni_args("IgnoreUnknown=1;IP=10.0.0.5;K8S_POD_NAME=x").expect("ok");
        assert_eq!(v.len(), 3);
        assert_eq!(
            cni_arg("IP=10.0.0.5,10.0.0.6;A=b", "IP").as_deref(),
            Some("10.0.0.5,10.0.0.6")
        );
        assert_eq!(parse_cni_args("novalue").unwrap_err().code, 4);
        assert_eq!(parse_cni_args("=x").unwrap_err().code, 4);
        assert!(parse_cni_args("").expect("empty").is_empty());
    }

    #[test]
    fn unknown_command_is_invalid_env() {
        let e = Command::parse("FOO").unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("FOO"));
    }
}
