//! A Kubernetes control plane for the cluster tests: etcd (Debian's), kube-apiserver,
//! kube-controller-manager and kube-scheduler (built by scripts/test-peers.sh from
//! `k8s.io/kubernetes` at the version pinned in tests/tools/versions.txt), all inside one test
//! netns, certificates, keys and kubeconfigs generated into the test's directory.
//!
//! Everything listens on that netns only: the API server on `https://<address>:6443` where
//! `address` is a /32 the harness puts on the netns' `lo` (the API server refuses a loopback
//! address for the `kubernetes` Service's endpoints), etcd and the other components on
//! 127.0.0.1 of the netns. Nothing is configured in the root netns. The processes are stopped by
//! PID on drop, also when a test fails; their logs stay in the test's directory until the
//! tempdir goes.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use netns_fixture::{describe_output, spawn_in_netns, test_peer, wait_until, ChildGuard};

/// The API server's port on the control plane's netns.
pub const API_PORT: u16 = 6443;
/// The Service cluster IP range (the first address is the `kubernetes` Service).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The cluster's pod network, split into per-Node `spec.podCIDRs` by kube-controller-manager.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The address put on the netns' `lo` and advertised by the API server when the caller gives
/// none.
pub const DEFAULT_ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 30, 255, 1);
/// How long the API server gets to report ready.
const READY: Duration = Duration::from_secs(90);
/// Time limit of one kubectl call.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(120);

/// A test peer built by scripts/test-peers.sh (`$BERTH_TOOLS_DIR/bin/<name>`).
pub fn tool(name: &str) -> PathBuf {
    test_peer(&format!("bin/{name}"))
}

/// `<tool> --version` (or `kubectl version --client`), first line, for the test output.
pub fn tool_version(name: &str) -> String {
    let bin = tool(name);
    let out = if name == "kubectl" {
        Command::new(&bin).args(["version", "--client"]).output()
    } else {
        Command::new(&bin).arg("--version").output()
    };
    match out {
        Ok(o) => {
            let s = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            s.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("(cannot run {}: {e})", bin.display()),
    }
}

/// The CSI sidecars deploy/kubernetes runs beside berth-csi, and the snapshot-controller.
pub const SIDECARS: [&str; 5] = [
    "csi-provisioner",
    "csi-attacher",
    "csi-resizer",
    "csi-snapshotter",
    "snapshot-controller",
];

/// The command of a sidecar (one of [`SIDECARS`]) with the arguments of
/// deploy/kubernetes/03-node-daemonset.yaml, the socket path and kubeconfig aside, or the
/// snapshot-controller as its release deploys it (as the admin here: a cluster component with
/// its own RBAC in a real install). `socket` is berth-csi's; `sa_kubeconfig` authenticates as
/// the berth-csi ServiceAccount; `node` is the node the pod would run on.
pub fn sidecar_command(
    name: &str,
    socket: &Path,
    sa_kubeconfig: &Path,
    admin_kubeconfig: &Path,
    node: &str,
) -> Result<Command, String> {
    let csi = format!("--csi-address={}", socket.display());
    let mut cmd = Command::new(tool(name));
    cmd.env("NODE_NAME", node)
        .env("NAMESPACE", "berth-system")
        .env("POD_NAME", format!("berth-csi-node-{node}"));
    match name {
        "csi-provisioner" => cmd.args([
            csi.as_str(),
            "--node-deployment=true",
            "--strict-topology=true",
            "--immediate-topology=false",
            "--enable-capacity=true",
            // The DaemonSet says 0 (owned by its pod); here no pod object exists.
            "--capacity-ownerref-level=-1",
            "--extra-create-metadata=true",
            "--timeout=120s",
            // Immediate claims: each node's provisioner tries after this delay.
            "--node-deployment-base-delay=1s",
            "--v=5",
        ]),
        "csi-attacher" | "csi-resizer" => cmd.args([
            csi.as_str(),
            "--leader-election=true",
            "--leader-election-namespace=berth-system",
            "--timeout=60s",
            "--v=4",
        ]),
        "csi-snapshotter" => cmd.args([
            csi.as_str(),
            "--node-deployment=true",
            "--leader-election=false",
            "--extra-create-metadata=true",
            "--timeout=300s",
            "--v=4",
        ]),
        "snapshot-controller" => cmd
            .arg(format!("--kubeconfig={}", admin_kubeconfig.display()))
            .args([
                "--leader-election=false",
                "--enable-distributed-snapshotting=true",
                "--v=4",
            ]),
        other => return Err(format!("unknown sidecar {other}")),
    };
    if name != "snapshot-controller" {
        cmd.arg(format!("--kubeconfig={}", sa_kubeconfig.display()));
    }
    Ok(cmd)
}

/// Who a kubeconfig authenticates as.
pub enum Credential<'a> {
    /// A client certificate and key (files).
    Cert { cert: &'a Path, key: &'a Path },
    /// A bearer token (a ServiceAccount token from the TokenRequest API).
    Token(&'a str),
}

/// Write a kubeconfig for `server` trusting `ca` as `cred`.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    cred: Credential<'_>,
) -> Result<(), String> {
    let user = match cred {
        Credential::Cert { cert, key } => serde_json::json!({
            "client-certificate": cert, "client-key": key,
        }),
        Credential::Token(t) => serde_json::json!({ "token": t }),
    };
    // JSON is YAML: kubectl and client-go read it as a kubeconfig.
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "berth-test", "cluster": {
            "server": server, "certificate-authority": ca,
        }}],
        "users": [{ "name": "user", "user": user }],
        "contexts": [{ "name": "test", "context": { "cluster": "berth-test", "user": "user" }}],
        "current-context": "test",
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The certificate authority and every certificate and key the control plane uses.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Generate a CA, the API server's serving certificate (for `address`, 127.0.0.1 and the
    /// `kubernetes` Service's names and IP), client certificates for the admin (group
    /// `system:masters`), kube-controller-manager and kube-scheduler, and the ServiceAccount
    /// signing key pair, with openssl.
    pub fn generate(dir: &Path, address: Ipv4Addr) -> Result<Pki, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=berth-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ])?;
        let san = format!(
            "IP:{address},IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,\
             DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
        );
        pki.sign("apiserver", "/CN=kube-apiserver", Some(&san))?;
        pki.sign("admin", "/O=system:masters/CN=berth-test-admin", None)?;
        pki.sign(
            "controller-manager",
            "/CN=system:kube-controller-manager",
            None,
        )?;
        pki.sign("scheduler", "/CN=system:kube-scheduler", None)?;
        pki.openssl(&["genrsa", "-out", "sa.key", "2048"])?;
        pki.openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        Ok(pki)
    }

    /// A client certificate `<name>.crt` (key `<name>.key`) for `subject` (e.g. a kubelet's
    /// `/O=system:nodes/CN=system:node:<node>`), signed by the CA.
    pub fn client_cert(&self, name: &str, subject: &str) -> Result<(), String> {
        self.sign(name, subject, None)
    }

    /// `<dir>/<name>`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn openssl(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let mut argv = vec!["openssl"];
            argv.extend_from_slice(args);
            Err(describe_output(&argv, &out))
        }
    }

    /// A key and a certificate `<name>.key`/`<name>.crt` signed by the CA: a server and client
    /// certificate when `san` is given, else a client certificate.
    fn sign(&self, name: &str, subject: &str, san: Option<&str>) -> Result<(), String> {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        self.openssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ])?;
        let extensions = match san {
            Some(s) => format!("subjectAltName={s}\nextendedKeyUsage=serverAuth,clientAuth\n"),
            None => "extendedKeyUsage=clientAuth\n".to_string(),
        };
        fs::write(self.path(&ext), extensions).map_err(|e| e.to_string())?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &ext,
        ])
    }
}

/// One control-plane process and its log.
struct Component {
    name: &'static str,
    child: ChildGuard,
    log: PathBuf,
}

/// etcd, kube-apiserver, kube-controller-manager and kube-scheduler in one netns.
pub struct ControlPlane {
    /// The test directory holding `pki/`, `etcd/`, kubeconfigs and logs.
    pub dir: PathBuf,
    netns: PathBuf,
    /// The API server's address on the netns.
    pub address: Ipv4Addr,
    pub pki: Pki,
    /// The admin kubeconfig (group system:masters).
    pub admin: PathBuf,
    components: Vec<Component>,
}

impl ControlPlane {
    /// Start the whole control plane in the netns at `netns` (whose `lo` is brought up and
    /// given `address`/32) and wait until the API server is ready and the controller-manager
    /// and scheduler answer their health checks. The netns must already exist; the caller owns
    /// it.
    pub fn start(netns: &Path, dir: &Path, address: Ipv4Addr) -> Result<ControlPlane, String> {
        let started = Instant::now();
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // `ip -n` takes the name under /run/netns.
        let ns = netns
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("{}: not a netns path", netns.display()))?;
        ns_ip(&ns, &["link", "set", "lo", "up"])?;
        let cidr = format!("{address}/32");
        let have = ns_ip(&ns, &["-4", "addr", "show", "dev", "lo"])?;
        if !have.contains(&format!("inet {cidr}")) {
            ns_ip(&ns, &["addr", "add", &cidr, "dev", "lo"])?;
        }
        let pki = Pki::generate(&dir.join("pki"), address)?;
        let server = format!("https://{address}:{API_PORT}");
        let admin = dir.join("admin.kubeconfig");
        write_kubeconfig(
            &admin,
            &server,
            &pki.path("ca.crt"),
            Credential::Cert {
                cert: &pki.path("admin.crt"),
                key: &pki.path("admin.key"),
            },
        )?;
        // The controller-manager and scheduler talk to the API server over the netns'
        // loopback, with their own identities (the RBAC roles Kubernetes bootstraps for them).
        let local = format!("https://127.0.0.1:{API_PORT}");
        for who in ["controller-manager", "scheduler"] {
            write_kubeconfig(
                &dir.join(format!("{who}.kubeconfig")),
                &local,
                &pki.path("ca.crt"),
                Credential::Cert {
                    cert: &pki.path(&format!("{who}.crt")),
                    key: &pki.path(&format!("{who}.key")),
                },
            )?;
        }
        let mut cp = ControlPlane {
            dir: dir.to_path_buf(),
            netns: netns.to_path_buf(),
            address,
            pki,
            admin,
            components: Vec::new(),
        };
        cp.start_etcd()?;
        cp.start_apiserver()?;
        cp.start_controllers()?;
        eprintln!(
            "control plane up in {:.1} s ({}, {}, {}, {}, etcd {})",
            started.elapsed().as_secs_f64(),
            tool_version("kube-apiserver"),
            tool_version("kube-controller-manager"),
            tool_version("kube-scheduler"),
            tool_version("kubectl"),
            etcd_version(),
        );
        Ok(cp)
    }

    /// `https://<address>:6443`.
    pub fn server(&self) -> String {
        format!("https://{}:{API_PORT}", self.address)
    }

    /// The netns the control plane runs in.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command) -> Result<(), String> {
        let log = self.dir.join(format!("{name}.log"));
        let f = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
        let child =
            spawn_in_netns(&self.netns, cmd).map_err(|e| format!("cannot start {name}: {e}"))?;
        self.components.push(Component {
            name,
            child: ChildGuard::new(child),
            log,
        });
        Ok(())
    }

    fn start_etcd(&mut self) -> Result<(), String> {
        let etcd = netns_fixture::find_program("etcd")
            .ok_or("etcd not found (Debian package etcd-server)")?;
        let mut cmd = Command::new(etcd);
        cmd.arg("--data-dir").arg(self.dir.join("etcd")).args([
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=default=http://127.0.0.1:2380",
            "--log-level=warn",
        ]);
        self.spawn("etcd", cmd)
    }

    /// Start kube-apiserver (again, after [`ControlPlane::stop_apiserver`]) and wait until it
    /// is ready.
    pub fn start_apiserver(&mut self) -> Result<(), String> {
        let p = |n: &str| self.pki.path(n).to_string_lossy().into_owned();
        let mut cmd = Command::new(tool("kube-apiserver"));
        cmd.args([
            "--etcd-servers=http://127.0.0.1:2379".to_string(),
            format!("--advertise-address={}", self.address),
            format!("--secure-port={API_PORT}"),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--kubelet-client-certificate={}", p("admin.crt")),
            format!("--kubelet-client-key={}", p("admin.key")),
            // Reach kubelets (exec, logs) at the address they report: Node names do not resolve.
            "--kubelet-preferred-address-types=InternalIP".to_string(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc".to_string(),
            "--authorization-mode=Node,RBAC".to_string(),
            // The node plugin DaemonSet runs privileged (mounts, loop devices).
            "--allow-privileged=true".to_string(),
            format!("--cert-dir={}", self.dir.join("apiserver-certs").display()),
            "--v=1".to_string(),
        ]);
        self.spawn("kube-apiserver", cmd)?;
        let deadline = Instant::now() + READY;
        loop {
            match self.kubectl(&["get", "--raw", "/readyz"]) {
                Ok(s) if s.trim() == "ok" => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    if !self.running("kube-apiserver") {
                        return Err(format!(
                            "kube-apiserver exited:\n{}",
                            self.log_tail("kube-apiserver")
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                other => {
                    return Err(format!(
                        "kube-apiserver not ready after {READY:?}: {other:?}\n{}\netcd:\n{}",
                        self.log_tail("kube-apiserver"),
                        self.log_tail("etcd")
                    ))
                }
            }
        }
    }

    fn start_controllers(&mut self) -> Result<(), String> {
        let p = |n: &str| self.pki.path(n).to_string_lossy().into_owned();
        let kcm_conf = self.dir.join("controller-manager.kubeconfig");
        let kcm_conf = kcm_conf.to_string_lossy();
        let mut kcm = Command::new(tool("kube-controller-manager"));
        kcm.args([
            format!("--kubeconfig={kcm_conf}"),
            format!("--authentication-kubeconfig={kcm_conf}"),
            format!("--authorization-kubeconfig={kcm_conf}"),
            "--bind-address=127.0.0.1".to_string(),
            "--secure-port=10257".to_string(),
            "--leader-elect=false".to_string(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            "--use-service-account-credentials=true".to_string(),
            format!("--cluster-signing-cert-file={}", p("ca.crt")),
            format!("--cluster-signing-key-file={}", p("ca.key")),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allocate-node-cidrs=true".to_string(),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            format!("--cert-dir={}", self.dir.join("kcm-certs").display()),
            "--v=1".to_string(),
        ]);
        self.spawn("kube-controller-manager", kcm)?;
        let sched_conf = self.dir.join("scheduler.kubeconfig");
        let sched_conf = sched_conf.to_string_lossy();
        let mut sched = Command::new(tool("kube-scheduler"));
        sched.args([
            format!("--kubeconfig={sched_conf}"),
            format!("--authentication-kubeconfig={sched_conf}"),
            format!("--authorization-kubeconfig={sched_conf}"),
            "--bind-address=127.0.0.1".to_string(),
            "--secure-port=10259".to_string(),
            "--leader-elect=false".to_string(),
            "--v=1".to_string(),
        ]);
        self.spawn("kube-scheduler", sched)?;
        // Both serve /healthz on their secure port, open to anonymous reads by default.
        for (name, port) in [
            ("kube-controller-manager", 10257),
            ("kube-scheduler", 10259),
        ] {
            let url = format!("https://127.0.0.1:{port}/healthz");
            let ok = wait_until(READY, || self.curl_ok(&url));
            if !ok {
                return Err(format!(
                    "{name} not healthy after {READY:?}:\n{}",
                    self.log_tail(name)
                ));
            }
        }
        Ok(())
    }

    /// Whether `url` answers 200 "ok" (the health endpoints allow anonymous reads of /healthz).
    fn curl_ok(&self, url: &str) -> bool {
        let out =
            netns_fixture::output_in_netns(&self.netns, &["curl", "-sk", "--max-time", "3", url]);
        matches!(out, Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok")
    }

    /// Whether the component `name` still runs.
    pub fn running(&mut self, name: &str) -> bool {
        self.components
            .iter_mut()
            .find(|c| c.name == name)
            .is_some_and(|c| c.child.running())
    }

    /// The last 40 lines of a component's log.
    pub fn log_tail(&self, name: &str) -> String {
        self.components
            .iter()
            .find(|c| c.name == name)
            .map(|c| log_tail(&c.log, 40))
            .unwrap_or_default()
    }

    /// kubectl as the admin, in the control plane's netns.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_with(&self.admin, args, None)
    }

    /// kubectl as the admin with `stdin` fed to it (for `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        self.kubectl_with(&self.admin, args, Some(stdin))
    }

    /// kubectl with the kubeconfig `conf`; stdout on success, the whole output on failure.
    pub fn kubectl_with(
        &self,
        conf: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, String> {
        let out = self.kubectl_output(conf, args, stdin)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let mut argv = vec!["kubectl"];
            argv.extend_from_slice(args);
            Err(describe_output(&argv, &out))
        }
    }

    fn kubectl_output(
        &self,
        conf: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, String> {
        use std::io::Write;
        let mut cmd = Command::new(tool("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(conf)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child =
            spawn_in_netns(&self.netns, cmd).map_err(|e| format!("cannot run kubectl: {e}"))?;
        if let Some(mut pipe) = child.stdin.take() {
            let text = stdin.unwrap_or_default();
            pipe.write_all(text.as_bytes())
                .map_err(|e| format!("kubectl stdin: {e}"))?;
        }
        let (out, timed_out) = crate::runtime::output_within(child, KUBECTL_TIMEOUT)
            .map_err(|e| format!("kubectl output: {e}"))?;
        if timed_out {
            return Err(format!(
                "kubectl {args:?} timed out after {KUBECTL_TIMEOUT:?}"
            ));
        }
        Ok(out)
    }

    /// `kubectl apply -f -` of one object (or a `List`), as the admin.
    pub fn apply(&self, obj: &serde_json::Value) -> Result<String, String> {
        self.kubectl_stdin(&["apply", "-f", "-"], &obj.to_string())
            .map_err(|e| format!("apply {obj}: {e}"))
    }

    /// `kubectl get <args> -o json`, parsed; `None` when kubectl fails (e.g. not found) or
    /// prints no JSON.
    pub fn get_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        self.kubectl(&a)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
    }

    /// The events of `object` in `namespace`, one `REASON  MESSAGE` line each (empty when
    /// kubectl fails), for assertions and failure messages.
    pub fn events(&self, namespace: &str, object: &str) -> String {
        self.kubectl(&[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            &format!("involvedObject.name={object}"),
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
            "--no-headers",
        ])
        .unwrap_or_default()
    }

    /// A kubeconfig at `path` authenticating as the ServiceAccount `namespace/name`, with a
    /// token from the TokenRequest API (what a pod of that account gets mounted).
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        path: &Path,
    ) -> Result<(), String> {
        let token = self.kubectl(&["create", "token", name, "-n", namespace, "--duration=2h"])?;
        write_kubeconfig(
            path,
            &self.server(),
            &self.pki.path("ca.crt"),
            Credential::Token(token.trim()),
        )
    }

    /// Stop kube-apiserver only (an API server outage; etcd and the controllers keep running).
    pub fn stop_apiserver(&mut self) {
        if let Some(i) = self
            .components
            .iter()
            .position(|c| c.name == "kube-apiserver")
        {
            let mut c = self.components.remove(i);
            c.child.stop();
        }
    }

    /// Stop every component (reverse start order).
    pub fn stop(&mut self) {
        while let Some(mut c) = self.components.pop() {
            c.child.stop();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ns_ip(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend_from_slice(args);
    let out = Command::new("ip")
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(describe_output(&argv, &out))
    }
}

fn etcd_version() -> String {
    Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version:").trim().to_string())
        })
        .unwrap_or_default()
}

/// The last `n` lines of a file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
