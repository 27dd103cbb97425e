//! Running another plugin (normally the IPAM plugin named by `ipam.type`)
//! found in CNI_PATH, with the same environment and stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};

use serde_json::Value;

use crate::env::{CmdEnv, Command};
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;
use crate::skel::{Plugin, Request};
use crate::version::SpecVersion;

/// Finds plugin `name` in the CNI_PATH directories.
pub fn find_plugin(name: &str, path: &[String]) -> Result<PathBuf, CniError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(CniError::invalid_config(format!(
            "ipam.type: {name:?} is not a plugin name"
        )));
    }
    for dir in path {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(CniError::invalid_config(format!(
        "ipam.type: plugin {name:?} not found in CNI_PATH ({})",
        path.join(":")
    )))
}

/// Executes a plugin binary for `cmd` and returns its stdout on success. A
/// plugin's error object is passed through unchanged.
pub fn exec_plugin(
    plugin: &Path,
    cmd: Command,
    env: &CmdEnv,
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    let spawn = || {
        Proc::new(plugin)
            .env("CNI_COMMAND", cmd.as_str())
            .env("CNI_CONTAINERID", &env.container_id)
            .env("CNI_NETNS", &env.netns)
            .env("CNI_IFNAME", &env.ifname)
            .env("CNI_ARGS", &env.args)
            .env("CNI_PATH", env.path.join(":"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
    };
    // ETXTBSY: a plugin binary just written (an upgrade copying it in) can
    // still be open for writing, also in a process forked meanwhile. libcni
    // retries too (six tries a second apart); doubling pauses from 20 ms
    // cover the same ~1.3 s without making the common short case wait long.
    let mut attempt = spawn();
    let mut pause = std::time::Duration::from_millis(20);
    for _ in 0..6 {
        match &attempt {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(pause);
                pause *= 2;
                attempt = spawn();
            }
            _ => break,
        }
    }
    let mut child = attempt.map_err(|e| {
        CniError::new(
            ErrorCode::IoFailure,
            format!("cannot run plugin {}: {e}", plugin.display()),
        )
    })?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading stdin closes the pipe; its
        // exit status and output below say what happened.
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            ErrorCode::IoFailure,
            format!("waiting for plugin {}: {e}", plugin.display()),
        )
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    if let Ok(e) = serde_json::from_slice::<CniError>(&out.stdout) {
        return Err(e);
    }
    Err(CniError::internal(format!(
        "plugin {} failed ({}) with output {:?}",
        plugin.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    )))
}

/// Delegation to the IPAM plugin of a configuration.
pub struct Delegate<'a> {
    pub plugin_type: &'a str,
    pub env: &'a CmdEnv,
    pub stdin: &'a [u8],
    pub version: SpecVersion,
}

impl Delegate<'_> {
    fn run(&self, cmd: Command) -> Result<Vec<u8>, CniError> {
        let bin = find_plugin(self.plugin_type, &self.env.path)?;
        exec_plugin(&bin, cmd, self.env, self.stdin)
    }

    pub fn add(&self) -> Result<CniResult, CniError> {
        let out = self.run(Command::Add)?;
        let v: Value = serde_json::from_slice(&out).map_err(|e| {
            CniError::new(
                ErrorCode::DecodingFailure,
                format!(
                    "IPAM plugin {:?} printed a result that is not JSON: {e}",
                    self.plugin_type
                ),
            )
        })?;
        CniResult::from_json(&v, self.version)
    }

    pub fn del(&self) -> Result<(), CniError> {
        self.run(Command::Del).map(|_| ())
    }

    pub fn check(&self) -> Result<(), CniError> {
        self.run(Command::Check).map(|_| ())
    }

    pub fn gc(&self) -> Result<(), CniError> {
        self.run(Command::Gc).map(|_| ())
    }

    pub fn status(&self) -> Result<(), CniError> {
        self.run(Command::Status).map(|_| ())
    }
}

/// The plugin named by `.0`, exec'd from CNI_PATH, as a [`Plugin`]: each
/// command runs it with the request's environment, stdin and version. Lets a
/// caller choose between linked code and the exec'd plugin behind one type.
pub struct Exec<'a>(pub &'a str);

impl Exec<'_> {
    fn of<'r>(&'r self, req: &'r Request) -> Delegate<'r> {
        Delegate {
            plugin_type: self.0,
            env: &req.env,
            stdin: &req.stdin,
            version: req.config.version,
        }
    }
}

impl Plugin for Exec<'_> {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        self.of(req).add()
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        self.of(req).del()
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        self.of(req).check()
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        self.of(req).gc()
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        self.of(req).status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "cni-core-delegate-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn finds_execs_and_passes_env_and_stdin() {
        let d = tempdir();
        // Echo back what the plugin saw, as a 1.0.0 result.
        script(
            &d,
            "ipamx",
            r#"read -r line; [ "$CNI_COMMAND" = ADD ] || exit 3; [ "$line" = '{"k":1}' ] || exit 4
echo '{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.2/24","gateway":"10.9.0.1"}]}'"#,
        );
        let env = CmdEnv {
            path: vec!["/nonexistent".into(), d.display().to_string()],
            ..Default::default()
        };
        let del = Delegate {
            plugin_type: "ipamx",
            env: &env,
            stdin: b"{\"k\":1}\n",
            version: SpecVersion::V1_0_0,
        };
        let r = del.add().expect("add");
        assert_eq!(r.ips[0].address.to_string(), "10.9.0.2/24");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn passes_plugin_errors_through() {
        let d = tempdir();
        script(
            &d,
            "ipamy",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":100,"msg":"full"}'; exit 1"#,
        );
        let env = CmdEnv {
            path: vec![d.display().to_string()],
            ..Default::default()
        };
        let del = Delegate {
            plugin_type: "ipamy",
            env: &env,
            stdin: b"{}",
            version: SpecVersion::V1_0_0,
        };
        let e = del.add().unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (100, "full"));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn retries_a_plugin_that_is_still_open_for_writing() {
        // An upgrade that has just copied a plugin in can still hold it open
        // for writing: exec fails with ETXTBSY until the writer closes it.
        let d = tempdir();
        script(&d, "busy", "cat >/dev/null; echo ok");
        let p = d.join("busy");
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open for writing");
        let closer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            drop(writer);
        });
        let out = exec_plugin(&p, Command::Version, &CmdEnv::default(), b"{}");
        closer.join().expect("closer");
        assert_eq!(out.expect("exec after the writer closed"), b"ok\n");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn missing_or_unsafe_names_are_config_errors() {
        let e = find_plugin("nope", &["/nonexistent".into()]).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("ipam.type"));
        assert_eq!(find_plugin("../bin/sh", &["/".into()]).unwrap_err().code, 7);
    }
}
