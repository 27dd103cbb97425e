//! The dispatch skeleton: environment + stdin -> command -> stdout.
//!
//! A plugin implements [`Plugin`]; [`dispatch`] does everything the spec asks
//! of every plugin (env validation, version rules, result conversion, the
//! error object) so plugins only hold their own logic.

use std::io::{Read, Write};

use serde_json::json;

use crate::config::{peek_version, NetConf};
use crate::env::{read_env, CmdEnv, Command};
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;
use crate::version::{SpecVersion, ALL_VERSIONS};

/// What a plugin says about itself.
#[derive(Debug, Clone, Copy)]
pub struct PluginInfo {
    pub name: &'static str,
    pub version: &'static str,
    /// One line: what the plugin does.
    pub description: &'static str,
}

impl PluginInfo {
    /// Printed when the binary is run by hand with no `CNI_COMMAND`.
    pub fn about(&self) -> String {
        format!(
            "{} {}: {}\nCNI protocol versions supported: {}\nThis is a CNI plugin: a container runtime runs it with CNI_COMMAND and the other CNI_* variables set and the network configuration on stdin.\n",
            self.name,
            self.version,
            self.description,
            SpecVersion::all_joined()
        )
    }

    /// The `--version` line.
    pub fn version_line(&self) -> String {
        format!(
            "{} {} (CNI spec {})",
            self.name,
            self.version,
            SpecVersion::all_joined()
        )
    }
}

/// One invocation, parsed and validated.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    pub env: CmdEnv,
    pub config: NetConf,
    /// The exact bytes received, for delegation.
    pub stdin: Vec<u8>,
}

/// The commands a plugin implements. VERSION is answered by the skeleton.
pub trait Plugin {
    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    fn del(&self, req: &Request) -> Result<(), CniError>;
    fn check(&self, req: &Request) -> Result<(), CniError>;
    fn gc(&self, req: &Request) -> Result<(), CniError>;
    fn status(&self, req: &Request) -> Result<(), CniError>;
}

/// What the process should print and exit with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No CNI_COMMAND: a person ran the binary. Print this, exit 0.
    About(String),
    /// Protocol output: stdout text and exit status.
    Reply { stdout: String, status: i32 },
}

fn version_reply(stdin: &[u8]) -> String {
    let asked = peek_version(stdin).unwrap_or(SpecVersion::LATEST);
    let supported: Vec<&str> = ALL_VERSIONS.iter().map(|v| v.as_str()).collect();
    json!({ "cniVersion": asked.as_str(), "supportedVersions": supported }).to_string()
}

fn check_version_rules(cmd: Command, v: SpecVersion) -> Result<(), CniError> {
    let ok = match cmd {
        Command::Check => v.supports_check(),
        Command::Gc | Command::Status => v.supports_gc_and_status(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        let min = if cmd == Command::Check {
            "0.4.0"
        } else {
            "1.1.0"
        };
        Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "cniVersion {v} does not allow {}: it needs {min} or later",
                cmd.as_str()
            ),
        ))
    }
}

/// Runs one invocation. `get` reads environment variables.
pub fn dispatch(
    plugin: &dyn Plugin,
    info: &PluginInfo,
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> Outcome {
    let cmd_raw = get("CNI_COMMAND").unwrap_or_default();
    if cmd_raw.is_empty() {
        return Outcome::About(info.about());
    }
    let mut input = Vec::new();
    let read_result = stdin.read_to_end(&mut input);
    let err_version = peek_version(&input).unwrap_or(SpecVersion::LATEST);
    let fail = |e: CniError| Outcome::Reply {
        stdout: e.to_json(err_version.as_str()),
        status: 1,
    };
    if let Err(e) = read_result {
        return fail(CniError::new(
            ErrorCode::IoFailure,
            format!("reading stdin: {e}"),
        ));
    }
    let cmd = match Command::parse(&cmd_raw) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let env = match read_env(cmd, get) {
        Ok(env) => env,
        Err(e) => return fail(e),
    };
    if cmd == Command::Version {
        return Outcome::Reply {
            stdout: version_reply(&input),
            status: 0,
        };
    }
    let config = match NetConf::parse(&input) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = check_version_rules(cmd, config.version) {
        return fail(e);
    }
    let version = config.version;
    crate::log::init_from_config(&config);
    let started = std::time::Instant::now();
    tracing::info!(
        plugin = info.name,
        command = cmd.as_str(),
        container = %env.container_id,
        ifname = %env.ifname,
        netns = %env.netns,
        network = %config.name,
        "start"
    );
    let req = Request {
        command: cmd,
        env,
        config,
        stdin: input,
    };
    let outcome = match cmd {
        Command::Add => plugin
            .add(&req)
            .map(|r| Some(r.to_json(version).to_string())),
        Command::Del => plugin.del(&req).map(|_| None),
        Command::Check => plugin.check(&req).map(|_| None),
        Command::Gc => plugin.gc(&req).map(|_| None),
        Command::Status => plugin.status(&req).map(|_| None),
        Command::Version => Ok(None),
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        Ok(Some(out)) => {
            tracing::info!(command = cmd.as_str(), ms, result = %out, "done");
            Outcome::Reply {
                stdout: out,
                status: 0,
            }
        }
        Ok(None) => {
            tracing::info!(command = cmd.as_str(), ms, "done");
            Outcome::Reply {
                stdout: String::new(),
                status: 0,
            }
        }
        Err(e) => {
            tracing::warn!(command = cmd.as_str(), ms, code = e.code, msg = %e.msg, "failed");
            Outcome::Reply {
                stdout: e.to_json(version.as_str()),
                status: 1,
            }
        }
    }
}

/// The `main` of a CNI plugin binary: dispatch using the process
/// environment and stdin, print, and exit.
/// A CNI plugin's whole `main`: with arguments a person is asking
/// (`--help`, `--version`), so they are answered; without, it runs as the
/// runtime execs it. `needs` adds a sentence to `--help` about what the
/// plugin relies on (e.g. a node agent).
pub fn main(plugin: &dyn Plugin, info: &PluginInfo, needs: Option<&str>) -> ! {
    if std::env::args_os().len() > 1 {
        let mut long = format!(
            "{} is a CNI plugin: a container runtime runs it with CNI_COMMAND and the other CNI_* \
             variables set and the network configuration on stdin.",
            info.name
        );
        if let Some(n) = needs {
            long.push(' ');
            long.push_str(n);
        }
        long.push_str(" Run with no arguments it prints what it is.");
        clap::Command::new(info.name)
            .version(info.version)
            .about(format!("CNI plugin: {}", info.description))
            .long_about(long)
            .get_matches();
        std::process::exit(0);
    }
    run(plugin, info)
}

/// Runs the plugin as a runtime execs it: dispatches the command in the
/// environment, prints the result (or error) and exits with its status.
pub fn run(plugin: &dyn Plugin, info: &PluginInfo) -> ! {
    let get = |k: &str| std::env::var(k).ok();
    let outcome = dispatch(plugin, info, &get, &mut std::io::stdin().lock());
    let mut out = std::io::stdout().lock();
    let status = match outcome {
        Outcome::About(text) => {
            let _ = out.write_all(text.as_bytes());
            0
        }
        Outcome::Reply { stdout, status } => {
            if !stdout.is_empty() {
                let _ = out.write_all(stdout.as_bytes());
                let _ = out.write_all(b"\n");
            }
            status
        }
    };
    let _ = out.flush();
    drop(out);
    exit_now(status)
}

/// Ends the process with `status` once the result is written, without the C
/// library's exit handlers. Nothing of ours runs in them: by now every store
/// is closed (its WAL checkpointed if due), every lock file released by its
/// handle's drop, stdout flushed and stderr is unbuffered. What would run is
/// the allocator's teardown (mimalloc collects and returns every heap page,
/// about 2% of a plugin run), work the kernel does anyway when the process
/// goes.
fn exit_now(status: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions; it never returns.
    unsafe { libc::_exit(status) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::IpConfig;
    use std::collections::HashMap;

    struct Fake;
    impl Plugin for Fake {
        fn add(&self, req: &Request) -> Result<CniResult, CniError> {
            if req.env.container_id == "fail" {
                return Err(CniError::new(ErrorCode::RangeExhausted, "no room"));
            }
            Ok(CniResult {
                ips: vec![IpConfig {
                    address: "10.0.0.2/24".parse().expect("net"),
                    gateway: None,
                    interface: None,
                }],
                ..Default::default()
            })
        }
        fn del(&self, _: &Request) -> Result<(), CniError> {
            Ok(())
        }
        fn check(&self, _: &Request) -> Result<(), CniError> {
            Ok(())
        }
        fn gc(&self, _: &Request) -> Result<(), CniError> {
            Ok(())
        }
        fn status(&self, _: &Request) -> Result<(), CniError> {
            Ok(())
        }
    }

    const INFO: PluginInfo = PluginInfo {
        name: "fake",
        version: "0.0.1",
        description: "a test plugin",
    };

    fn run_with(env: &[(&str, &str)], stdin: &str) -> Outcome {
        let m: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = move |k: &str| m.get(k).cloned();
        dispatch(&Fake, &INFO, &get, &mut stdin.as_bytes())
    }

    fn reply(o: Outcome) -> (serde_json::Value, i32) {
        match o {
            Outcome::Reply { stdout, status } => (
                serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
                status,
            ),
            Outcome::About(a) => panic!("unexpected about: {a}"),
        }
    }

    const ADD_ENV: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn no_command_prints_about() {
        match run_with(&[], "") {
            Outcome::About(a) => {
                assert!(a.contains("fake 0.0.1"));
                assert!(a.contains("1.1.0") && a.contains("0.1.0"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn add_result_is_in_the_requested_version() {
        let (v, st) = reply(run_with(&ADD_ENV, r#"{"cniVersion":"0.3.1","name":"n"}"#));
        assert_eq!(st, 0);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        let (v, _) = reply(run_with(&ADD_ENV, r#"{"cniVersion":"0.2.0","name":"n"}"#));
        assert_eq!(v["ip4"]["ip"], "10.0.0.2/24");
    }

    #[test]
    fn plugin_errors_are_printed_with_exit_1() {
        let mut env = ADD_ENV;
        env[1] = ("CNI_CONTAINERID", "fail");
        let (v, st) = reply(run_with(&env, r#"{"cniVersion":"1.0.0","name":"n"}"#));
        assert_eq!(st, 1);
        assert_eq!(v["code"], 100);
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn version_rules_for_check_gc_status() {
        let mut env = ADD_ENV;
        env[0] = ("CNI_COMMAND", "CHECK");
        let (v, st) = reply(run_with(&env, r#"{"cniVersion":"0.3.1","name":"n"}"#));
        assert_eq!((v["code"].as_u64(), st), (Some(1), 1));
        let (_, st) = reply(run_with(&env, r#"{"cniVersion":"0.4.0","name":"n"}"#));
        assert_eq!(st, 0);
        for cmd in ["GC", "STATUS"] {
            let e = [("CNI_COMMAND", cmd)];
            let (v, st) = reply(run_with(&e, r#"{"cniVersion":"1.0.0","name":"n"}"#));
            assert_eq!((v["code"].as_u64(), st), (Some(1), 1), "{cmd}");
            let (_, st) = reply(run_with(&e, r#"{"cniVersion":"1.1.0","name":"n"}"#));
            assert_eq!(st, 0, "{cmd}");
        }
    }

    #[test]
    fn version_command_lists_every_version() {
        let (v, st) = reply(run_with(
            &[("CNI_COMMAND", "VERSION")],
            r#"{"cniVersion":"0.4.0"}"#,
        ));
        assert_eq!(st, 0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().map(Vec::len), Some(7));
    }

    #[test]
    fn input_errors_get_their_codes() {
        let (v, _) = reply(run_with(&ADD_ENV, "{oops"));
        assert_eq!(v["code"], 6);
        let (v, _) = reply(run_with(&ADD_ENV, r#"{"cniVersion":"2.0.0","name":"n"}"#));
        assert_eq!(v["code"], 1);
        let (v, _) = reply(run_with(
            &ADD_ENV[..3],
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
        ));
        assert_eq!(v["code"], 4);
        assert!(v["msg"].as_str().unwrap_or_default().contains("CNI_IFNAME"));
        let (v, _) = reply(run_with(&[("CNI_COMMAND", "BOGUS")], "{}"));
        assert_eq!(v["code"], 4);
    }
}
