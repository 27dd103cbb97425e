//! Shows the NFS test fixtures work: a ganesha NFS server in its own netns
//! (`common::nfs_server`) and a QEMU guest with an NFS client in that netns
//! (`common::guest`). Needs root, nfs-ganesha(-vfs), rpcbind, qemu-system-x86,
//! busybox-static, cpio and a guest kernel (scripts/guest-kernel.sh);
//! without them the tests say why and skip.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::guest::{Guest, GuestOptions};
use common::nfs_server::{is_skip, NfsServer, NETNS_PREFIX};
use proto::v1::identity_client::IdentityClient;
use proto::v1::GetPluginInfoRequest;

/// Host /run entries rpcbind and ganesha would leave if they ran in the
/// host's mount namespace.
const HOST_RUN_LEFTOVERS: &[&str] = &["/run/rpcbind.sock", "/run/rpcbind.lock", "/run/ganesha"];

fn start_server() -> Option<NfsServer> {
    match NfsServer::start() {
        Ok(s) => Some(s),
        Err(e) if is_skip(&e) => {
            eprintln!("{e}");
            None
        }
        Err(e) => panic!("NFS server did not start: {e}"),
    }
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// A PID is gone when /proc has no entry or only a zombie someone else
/// must reap (ours are all reaped by the fixtures).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
    }
}

fn existing_leftovers() -> Vec<&'static str> {
    HOST_RUN_LEFTOVERS
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect()
}

#[test]
fn guest_mounts_export_over_nfs() {
    if !common::require_root() {
        return;
    }
    let leftovers_before = existing_leftovers();
    let Some(mut server) = start_server() else {
        return;
    };
    let netns = server.netns().to_string();
    assert!(netns.starts_with(NETNS_PREFIX));
    let server_pids = server.pids();

    // The server answers inside its netns, on the address guests use.
    server
        .connect(2049, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("2049 in {netns}: {e}\n{}", server.log()));
    server
        .ping(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("NFS NULL call: {e}\n{}", server.log()));

    let t = Instant::now();
    let guest = match Guest::boot(&netns, GuestOptions::new()) {
        Ok(g) => g,
        Err(e) if is_skip(&e) => {
            eprintln!("{e}");
            return;
        }
        Err(e) => panic!("guest did not boot: {e}\nserver log:\n{}", server.log()),
    };
    eprintln!(
        "guest ({}) booted to shell in {:.1?} (fixture total {:.1?})",
        guest.kernel_version(),
        guest.boot_time(),
        t.elapsed()
    );
    let qemu_pid = guest.pid().expect("qemu runs");
    let console = guest.console();
    assert!(
        console.contains("berth-guest: ready"),
        "init did not finish:\n{console}"
    );
    assert!(
        !console.contains("berth-guest: insmod"),
        "a module did not load:\n{console}"
    );

    // A command's exit status and output come back.
    assert_eq!(
        guest
            .sh("echo out; echo err >&2; exit 3")
            .expect("guest sh"),
        (3, "out\nerr\n".to_string())
    );

    // NFSv4.1 round trip: the guest writes, the host sees it in the export.
    let t = Instant::now();
    let (rc, out) = guest
        .sh(&format!(
            "mount -t nfs4 -o vers=4.1 {}:{} /mnt && echo hello > /mnt/f && cat /mnt/f && grep -c ' /mnt nfs4 .*vers=4.1' /proc/mounts && umount /mnt",
            server.addr(),
            server.share()
        ))
        .expect("guest sh");
    assert_eq!(
        rc,
        0,
        "v4.1 mount/write failed: {out}\nconsole:\n{}\nserver:\n{}",
        guest.console(),
        server.log()
    );
    assert_eq!(out, "hello\n1\n");
    eprintln!(
        "nfs4.1 mount + write + read + umount in guest: {:.1?}",
        t.elapsed()
    );
    let on_host =
        std::fs::read_to_string(server.export_dir().join("f")).expect("f in the export dir");
    assert_eq!(on_host, "hello\n");

    // NFSv3 through busybox mount (it talks MOUNT via rpcbind itself).
    let t = Instant::now();
    let (rc, out) = guest
        .sh(&format!(
            "mount -t nfs -o vers=3,nolock,proto=tcp,mountproto=tcp {}:{} /mnt && cat /mnt/f && echo v3 > /mnt/g && grep -c ' /mnt nfs .*vers=3' /proc/mounts && umount /mnt",
            server.addr(),
            server.share()
        ))
        .expect("guest sh");
    assert_eq!(rc, 0, "v3 mount failed: {out}\nserver:\n{}", server.log());
    assert_eq!(out, "hello\n1\n");
    assert_eq!(
        std::fs::read_to_string(server.export_dir().join("g")).expect("g"),
        "v3\n"
    );
    eprintln!(
        "nfs3 mount + read + write + umount in guest: {:.1?}",
        t.elapsed()
    );

    // Restarting ganesha (Graceless) serves the same export again at once.
    let t = Instant::now();
    server.restart().unwrap_or_else(|e| panic!("restart: {e}"));
    eprintln!("ganesha restart until ready: {:.1?}", t.elapsed());
    let out = guest
        .sh_ok(
            "mount -t nfs4 -o vers=4.1 10.0.2.2:/export /mnt && cat /mnt/f /mnt/g && umount /mnt",
        )
        .unwrap_or_else(|e| panic!("{e}\nserver:\n{}", server.log()));
    assert_eq!(out, "hello\nv3\n");

    let mut pids = server.pids();
    pids.extend(server_pids);
    pids.push(qemu_pid);
    drop(guest);
    drop(server);

    assert!(!netns_exists(&netns), "netns {netns} left behind");
    for pid in pids {
        assert!(process_gone(pid), "process {pid} left behind");
    }
    assert_eq!(
        existing_leftovers(),
        leftovers_before,
        "rpcbind/ganesha files left in the host's /run"
    );
}

/// Pause, resume, kill and restart, without a guest; runs in parallel with
/// the test above, so it also shows two servers coexist.
#[test]
fn server_pause_resume_kill_restart() {
    if !common::require_root() {
        return;
    }
    let Some(mut server) = start_server() else {
        return;
    };
    let netns = server.netns().to_string();
    let short = Duration::from_secs(1);
    server.ping(short).expect("ping a fresh server");
    assert_ne!(server.mountd_port(short).expect("GETPORT"), 0);

    server.pause().expect("pause");
    assert!(
        server.ping(short).is_err(),
        "a paused ganesha still answers"
    );
    server.resume().expect("resume");
    server
        .ping(Duration::from_secs(5))
        .expect("ping after resume");

    let old = server.ganesha_pid().expect("ganesha pid");
    server.kill();
    assert!(server.ganesha_pid().is_none());
    assert!(process_gone(old), "killed ganesha {old} still there");
    assert!(
        server.ping(short).is_err(),
        "a killed ganesha still answers"
    );

    server.restart().unwrap_or_else(|e| panic!("restart: {e}"));
    server.ping(short).expect("ping after restart");
    assert_ne!(server.mountd_port(short).expect("GETPORT after restart"), 0);

    // A helper process in the netns sees the server at 10.0.2.2 too.
    let mut probe = std::process::Command::new("ip");
    probe.args(["-o", "addr", "show", "dev", "lo"]);
    let out = server
        .run_in_netns(&mut probe)
        .expect("netns")
        .output()
        .expect("run ip in netns");
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.0.2.2/32"));

    // Dropping a paused server must not hang.
    server.pause().expect("pause before drop");
    let pids = server.pids();
    drop(server);
    assert!(!netns_exists(&netns), "netns {netns} left behind");
    for pid in pids {
        assert!(process_gone(pid), "process {pid} left behind");
    }
}

/// Our own binary as the guest's daemon (a dynamic executable: its
/// libraries come along), reached over gRPC through a forwarded port.
#[tokio::test]
async fn driver_in_guest_answers_grpc_over_forwarded_port() {
    if !common::require_root() {
        return;
    }
    let Some(server) = start_server() else { return };
    const CSI_PORT: u16 = 10000;
    let opts = GuestOptions::new()
        .file(env!("CARGO_BIN_EXE_berth-csi"), "/bin/berth-csi")
        .daemon(format!(
            "/bin/berth-csi --endpoint tcp://0.0.0.0:{CSI_PORT} --mode node --node-id guest-1"
        ))
        .forward(CSI_PORT);
    let guest = match Guest::boot(server.netns(), opts) {
        Ok(g) => g,
        Err(e) if is_skip(&e) => {
            eprintln!("{e}");
            return;
        }
        Err(e) => panic!("guest did not boot: {e}"),
    };
    eprintln!(
        "guest with berth-csi booted to shell in {:.1?}",
        guest.boot_time()
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        let channel = guest.grpc_channel(CSI_PORT).await;
        let res = match channel {
            Ok(ch) => IdentityClient::new(ch)
                .get_plugin_info(GetPluginInfoRequest {})
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match res {
            Ok(r) => break r.into_inner(),
            Err(e) if Instant::now() > deadline => panic!(
                "berth-csi in the guest did not answer: {e}\ndaemon log: {:?}\nconsole:\n{}",
                guest.daemon_log(),
                guest.console()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    assert_eq!(info.name, "csi.berth.dev");
    let pid = guest.sh_ok("cat /run/daemon.pid").expect("daemon pid");
    let comm = guest
        .sh_ok(&format!("cat /proc/{}/comm", pid.trim()))
        .expect("daemon comm");
    assert_eq!(comm.trim(), "berth-csi");
}
