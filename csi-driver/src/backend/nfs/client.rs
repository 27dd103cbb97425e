//! A user-space NFSv3 session for the controller: MOUNT for the export's
//! root handle, then NFS calls on handles. No kernel mount is made, so a
//! dead or hung server costs one bounded wait: every network step runs
//! under the configured timeout and ends in UNAVAILABLE (refused, reset,
//! unresolvable) or DEADLINE_EXCEEDED (no answer in time).

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use nfs3_client::nfs3_types::nfs3::{
    self, createhow3, diropargs3, fattr3, filename3, ftype3, nfs_fh3, nfspath3, nfsstat3, sattr3,
    set_atime, set_mtime, stable_how, symlinkdata3, Nfs3Option, Nfs3Result,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{ConnectError, Nfs3ConnectionBuilder, RpcError};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

type Conn = nfs3_client::Nfs3Connection<TokioIo<TcpStream>>;

/// Largest read or write we issue (the client library does not take
/// fragmented RPC replies, so stay well inside one record).
const MAX_IO: u32 = 512 * 1024;

/// One directory entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// File name.
    pub name: Vec<u8>,
    /// Handle.
    pub fh: nfs_fh3,
    /// Attributes.
    pub attr: fattr3,
}

/// A session with one export of one server.
pub struct Nfs {
    conn: Conn,
    root: nfs_fh3,
    server: String,
    timeout: Duration,
    rsize: u32,
    wsize: u32,
}

fn unavailable(server: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("NFS server {server}: {what}: {e}"))
}

fn rpc_error(server: &str, op: &str, e: RpcError) -> Error {
    match e {
        RpcError::Io(e) => unavailable(server, op, e),
        other => Error::Internal(format!("NFS server {server}: {op}: {other}")),
    }
}

/// The error for an NFS status other than the ones a caller handles.
pub fn status_error(server: &str, op: &str, st: nfsstat3) -> Error {
    let msg = format!("NFS server {server}: {op}: {st}");
    match st {
        nfsstat3::NFS3ERR_NOENT | nfsstat3::NFS3ERR_STALE => Error::NotFound(msg),
        nfsstat3::NFS3ERR_NOSPC | nfsstat3::NFS3ERR_DQUOT => Error::ResourceExhausted(msg),
        nfsstat3::NFS3ERR_ACCES | nfsstat3::NFS3ERR_PERM | nfsstat3::NFS3ERR_ROFS => {
            Error::FailedPrecondition(format!(
                "{msg} (check the export's access and squash settings)"
            ))
        }
        nfsstat3::NFS3ERR_JUKEBOX => Error::Unavailable(msg),
        _ => Error::Internal(msg),
    }
}

async fn bounded<T>(
    server: &str,
    timeout: Duration,
    op: &str,
    f: impl Future<Output = std::result::Result<T, RpcError>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(rpc_error(server, op, e)),
        Err(_) => Err(Error::DeadlineExceeded(format!(
            "NFS server {server}: {op} got no answer within {} s (--nfs-timeout)",
            timeout.as_secs_f32()
        ))),
    }
}

/// Runs one NFS call under the session's bound.
macro_rules! call {
    ($s:ident, $op:expr, $method:ident, $args:expr) => {
        bounded(&$s.server, $s.timeout, $op, $s.conn.$method($args)).await
    };
}

fn name(n: &[u8]) -> filename3<'_> {
    filename3(Opaque::borrowed(n))
}

fn dirop<'a>(dir: &nfs_fh3, n: &'a [u8]) -> diropargs3<'a> {
    diropargs3 {
        dir: dir.clone(),
        name: name(n),
    }
}

fn mode_attr(mode: Option<u32>) -> sattr3 {
    sattr3 {
        mode: mode.map_or(Nfs3Option::None, Nfs3Option::Some),
        ..Default::default()
    }
}

async fn resolve(server: &str, timeout: Duration) -> Result<IpAddr> {
    let bare = server.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse() {
        return Ok(ip);
    }
    let look = tokio::net::lookup_host((bare, 111));
    match tokio::time::timeout(timeout, look).await {
        Ok(Ok(mut addrs)) => addrs
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| unavailable(server, "resolving the name", "no address")),
        Ok(Err(e)) => Err(unavailable(server, "resolving the name", e)),
        Err(_) => Err(Error::DeadlineExceeded(format!(
            "NFS server {server}: resolving the name took longer than {} s",
            timeout.as_secs_f32()
        ))),
    }
}

impl Nfs {
    /// Mounts `share` of `server` (MOUNT v3 over TCP, AUTH_SYS as root) and
    /// reads the server's transfer sizes.
    pub async fn connect(server: &str, share: &str, timeout: Duration) -> Result<Nfs> {
        let ip = resolve(server, timeout).await?;
        let cred = auth_unix {
            stamp: std::process::id(),
            machinename: Opaque::owned(b"berth-csi".to_vec()),
            uid: 0,
            gid: 0,
            gids: vec![],
        };
        // A reserved source port is what servers with the `secure` export
        // option (the Linux default) want; only root has one, and the
        // library binds them for IPv4 only.
        let privileged = ip.is_ipv4() && crate::driver::running_as_root();
        let builder = Nfs3ConnectionBuilder::new(TokioConnector, ip.to_string(), share)
            .credential(opaque_auth::auth_unix(&cred))
            .connect_from_privileged_port(privileged);
        let conn = match tokio::time::timeout(timeout, builder.mount()).await {
            Ok(Ok(c)) => c,
            Ok(Err(ConnectError::Mount(nfs3_client::MountError::Denied(st)))) => {
                return Err(Error::FailedPrecondition(format!(
                    "NFS server {server} refused to mount {share}: {st:?}"
                )))
            }
            Ok(Err(e)) => return Err(unavailable(server, &format!("mounting {share}"), e)),
            Err(_) => {
                return Err(Error::DeadlineExceeded(format!(
                "NFS server {server}: mounting {share} got no answer within {} s (--nfs-timeout)",
                timeout.as_secs_f32()
            )))
            }
        };
        let root = conn.root_nfs_fh3();
        let mut nfs = Nfs {
            conn,
            root,
            server: server.to_string(),
            timeout,
            rsize: 64 * 1024,
            wsize: 64 * 1024,
        };
        let root = nfs.root.clone();
        let info = call!(nfs, "FSINFO", fsinfo, &nfs3::FSINFO3args { fsroot: root })?;
        if let Nfs3Result::Ok(ok) = info {
            nfs.rsize = ok.rtpref.max(4096).min(ok.rtmax.max(4096)).min(MAX_IO);
            nfs.wsize = ok.wtpref.max(4096).min(ok.wtmax.max(4096)).min(MAX_IO);
        }
        Ok(nfs)
    }

    /// Ends the session (UMNT, best effort, short bound).
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.unmount()).await;
    }

    /// Looks `n` up in `dir`; `None` when it does not exist.
    pub async fn lookup(&mut self, dir: &nfs_fh3, n: &[u8]) -> Result<Option<(nfs_fh3, fattr3)>> {
        let args = nfs3::LOOKUP3args {
            what: dirop(dir, n),
        };
        match call!(self, "LOOKUP", lookup, &args)? {
            Nfs3Result::Ok(ok) => {
                let attr = match ok.obj_attributes {
                    Nfs3Option::Some(a) => a,
                    Nfs3Option::None => self.getattr(&ok.object).await?,
                };
                Ok(Some((ok.object, attr)))
            }
            Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => Ok(None),
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "LOOKUP", st)),
        }
    }

    /// Looks up a `/`-separated path below the export root.
    pub async fn lookup_path(&mut self, path: &str) -> Result<Option<(nfs_fh3, fattr3)>> {
        let mut cur = self.root.clone();
        let mut attr = self.getattr(&cur).await?;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            match self.lookup(&cur, c.as_bytes()).await? {
                Some((fh, a)) => {
                    cur = fh;
                    attr = a;
                }
                None => return Ok(None),
            }
        }
        Ok(Some((cur, attr)))
    }

    /// Attributes of a handle.
    pub async fn getattr(&mut self, fh: &nfs_fh3) -> Result<fattr3> {
        let args = nfs3::GETATTR3args { object: fh.clone() };
        match call!(self, "GETATTR", getattr, &args)? {
            Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "GETATTR", st)),
        }
    }

    /// Makes directory `n` in `dir` (an existing directory is fine).
    pub async fn mkdir(&mut self, dir: &nfs_fh3, n: &[u8], mode: u32) -> Result<nfs_fh3> {
        let args = nfs3::MKDIR3args {
            where_: dirop(dir, n),
            attributes: mode_attr(Some(mode)),
        };
        match call!(self, "MKDIR", mkdir, &args)? {
            Nfs3Result::Ok(ok) => match ok.obj {
                Nfs3Option::Some(fh) => Ok(fh),
                Nfs3Option::None => self.expect_dir(dir, n).await,
            },
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => self.expect_dir(dir, n).await,
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "MKDIR", st)),
        }
    }

    async fn expect_dir(&mut self, dir: &nfs_fh3, n: &[u8]) -> Result<nfs_fh3> {
        match self.lookup(dir, n).await? {
            Some((fh, a)) if a.type_ == ftype3::NF3DIR => Ok(fh),
            Some(_) => Err(Error::FailedPrecondition(format!(
                "NFS server {}: {} exists and is not a directory",
                self.server,
                String::from_utf8_lossy(n)
            ))),
            None => Err(Error::Internal(format!(
                "NFS server {}: {} vanished after MKDIR",
                self.server,
                String::from_utf8_lossy(n)
            ))),
        }
    }

    /// Makes every directory of `path` below the root; the last one gets
    /// `mode`, the ones above it 0755.
    pub async fn mkdir_p(&mut self, path: &str, mode: u32) -> Result<nfs_fh3> {
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let mut cur = self.root.clone();
        for (i, c) in parts.iter().enumerate() {
            let m = if i + 1 == parts.len() { mode } else { 0o755 };
            cur = self.mkdir(&cur, c.as_bytes(), m).await?;
        }
        Ok(cur)
    }

    /// Sets mode, owner and modification time (each when given).
    pub async fn setattr(
        &mut self,
        fh: &nfs_fh3,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
        mtime: Option<nfs3::nfstime3>,
    ) -> Result<()> {
        let attrs = sattr3 {
            mode: mode.map_or(Nfs3Option::None, Nfs3Option::Some),
            uid: owner.map_or(Nfs3Option::None, |o| Nfs3Option::Some(o.0)),
            gid: owner.map_or(Nfs3Option::None, |o| Nfs3Option::Some(o.1)),
            size: Nfs3Option::None,
            atime: set_atime::DONT_CHANGE,
            mtime: mtime.map_or(set_mtime::DONT_CHANGE, set_mtime::SET_TO_CLIENT_TIME),
        };
        let args = nfs3::SETATTR3args {
            object: fh.clone(),
            new_attributes: attrs,
            guard: Nfs3Option::None,
        };
        match call!(self, "SETATTR", setattr, &args)? {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "SETATTR", st)),
        }
    }

    /// Every entry of a directory but `.` and `..`.
    pub async fn readdir(&mut self, dir: &nfs_fh3) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut cookie = 0;
        let mut verf = nfs3::cookieverf3::default();
        loop {
            let args = nfs3::READDIRPLUS3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                dircount: 16 * 1024,
                maxcount: 128 * 1024,
            };
            let ok = match call!(self, "READDIRPLUS", readdirplus, &args)? {
                Nfs3Result::Ok(ok) => ok,
                Nfs3Result::Err((st, _)) => {
                    return Err(status_error(&self.server, "READDIRPLUS", st))
                }
            };
            verf = ok.cookieverf;
            let eof = ok.reply.eof;
            let entries = ok.reply.entries.into_inner();
            let progressed = !entries.is_empty();
            for e in entries {
                cookie = e.cookie;
                let n = e.name.as_ref().to_vec();
                if n == b"." || n == b".." {
                    continue;
                }
                let (fh, attr) = match (e.name_handle, e.name_attributes) {
                    (Nfs3Option::Some(fh), Nfs3Option::Some(a)) => (fh, a),
                    _ => match self.lookup(dir, &n).await? {
                        Some(x) => x,
                        None => continue,
                    },
                };
                out.push(Entry { name: n, fh, attr });
            }
            if eof || !progressed {
                return Ok(out);
            }
        }
    }

    /// Removes a non-directory; a missing one is fine.
    pub async fn remove(&mut self, dir: &nfs_fh3, n: &[u8]) -> Result<()> {
        let args = nfs3::REMOVE3args {
            object: dirop(dir, n),
        };
        match call!(self, "REMOVE", remove, &args)? {
            Nfs3Result::Ok(_) | Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => Ok(()),
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "REMOVE", st)),
        }
    }

    /// Removes an empty directory; a missing one is fine.
    pub async fn rmdir(&mut self, dir: &nfs_fh3, n: &[u8]) -> Result<()> {
        let args = nfs3::RMDIR3args {
            object: dirop(dir, n),
        };
        match call!(self, "RMDIR", rmdir, &args)? {
            Nfs3Result::Ok(_) | Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => Ok(()),
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "RMDIR", st)),
        }
    }

    /// Removes a directory if it is empty; a missing or non-empty one is
    /// left as it is.
    pub async fn rmdir_if_empty(&mut self, dir: &nfs_fh3, n: &[u8]) -> Result<()> {
        let args = nfs3::RMDIR3args {
            object: dirop(dir, n),
        };
        match call!(self, "RMDIR", rmdir, &args)? {
            Nfs3Result::Ok(_)
            | Nfs3Result::Err((
                nfsstat3::NFS3ERR_NOENT | nfsstat3::NFS3ERR_NOTEMPTY | nfsstat3::NFS3ERR_EXIST,
                _,
            )) => Ok(()),
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "RMDIR", st)),
        }
    }

    /// Removes `n` in `dir` and, for a directory, everything below it.
    /// Iterative (an explicit stack), so deep trees cost no recursion.
    pub async fn remove_tree(&mut self, dir: &nfs_fh3, n: &[u8]) -> Result<()> {
        let Some((fh, attr)) = self.lookup(dir, n).await? else {
            return Ok(());
        };
        if attr.type_ != ftype3::NF3DIR {
            return self.remove(dir, n).await;
        }
        // (parent, name, handle, children listed?)
        let mut stack = vec![(dir.clone(), n.to_vec(), fh, false)];
        while let Some((parent, name, fh, listed)) = stack.pop() {
            if listed {
                self.rmdir(&parent, &name).await?;
                continue;
            }
            let children = self.readdir(&fh).await?;
            stack.push((parent, name, fh.clone(), true));
            for c in children {
                if c.attr.type_ == ftype3::NF3DIR {
                    stack.push((fh.clone(), c.name, c.fh, false));
                } else {
                    self.remove(&fh, &c.name).await?;
                }
            }
        }
        Ok(())
    }

    /// Renames within the export.
    pub async fn rename(
        &mut self,
        from_dir: &nfs_fh3,
        from: &[u8],
        to_dir: &nfs_fh3,
        to: &[u8],
    ) -> Result<()> {
        let args = nfs3::RENAME3args {
            from: dirop(from_dir, from),
            to: dirop(to_dir, to),
        };
        match call!(self, "RENAME", rename, &args)? {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "RENAME", st)),
        }
    }

    /// Creates (or truncates) a regular file.
    pub async fn create(&mut self, dir: &nfs_fh3, n: &[u8], mode: u32) -> Result<nfs_fh3> {
        let attrs = sattr3 {
            mode: Nfs3Option::Some(mode),
            size: Nfs3Option::Some(0),
            ..Default::default()
        };
        let args = nfs3::CREATE3args {
            where_: dirop(dir, n),
            how: createhow3::UNCHECKED(attrs),
        };
        match call!(self, "CREATE", create, &args)? {
            Nfs3Result::Ok(ok) => match ok.obj {
                Nfs3Option::Some(fh) => Ok(fh),
                Nfs3Option::None => match self.lookup(dir, n).await? {
                    Some((fh, _)) => Ok(fh),
                    None => Err(Error::Internal(format!(
                        "NFS server {}: created file vanished",
                        self.server
                    ))),
                },
            },
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "CREATE", st)),
        }
    }

    /// Writes all of `data` at `offset` (unstable; call [`Nfs::commit`]).
    pub async fn write_all(
        &mut self,
        fh: &nfs_fh3,
        mut offset: u64,
        mut data: &[u8],
    ) -> Result<()> {
        while !data.is_empty() {
            let n = data.len().min(self.wsize as usize);
            let args = nfs3::WRITE3args {
                file: fh.clone(),
                offset,
                count: n as u32,
                stable: stable_how::UNSTABLE,
                data: Opaque::borrowed(&data[..n]),
            };
            let done = match call!(self, "WRITE", write, &args)? {
                Nfs3Result::Ok(ok) => ok.count as usize,
                Nfs3Result::Err((st, _)) => return Err(status_error(&self.server, "WRITE", st)),
            };
            if done == 0 {
                return Err(Error::Internal(format!(
                    "NFS server {}: WRITE made no progress",
                    self.server
                )));
            }
            offset += done as u64;
            data = &data[done.min(data.len())..];
        }
        Ok(())
    }

    /// Makes unstable writes durable.
    pub async fn commit(&mut self, fh: &nfs_fh3) -> Result<()> {
        let args = nfs3::COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0,
        };
        match call!(self, "COMMIT", commit, &args)? {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "COMMIT", st)),
        }
    }

    /// Reads up to one transfer at `offset`: (bytes, end of file).
    pub async fn read(&mut self, fh: &nfs_fh3, offset: u64) -> Result<(Vec<u8>, bool)> {
        let args = nfs3::READ3args {
            file: fh.clone(),
            offset,
            count: self.rsize,
        };
        match call!(self, "READ", read, &args)? {
            Nfs3Result::Ok(ok) => {
                let data = ok.data.to_vec();
                let eof = ok.eof || data.is_empty();
                Ok((data, eof))
            }
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "READ", st)),
        }
    }

    /// A symbolic link's target.
    pub async fn readlink(&mut self, fh: &nfs_fh3) -> Result<Vec<u8>> {
        let args = nfs3::READLINK3args {
            symlink: fh.clone(),
        };
        match call!(self, "READLINK", readlink, &args)? {
            Nfs3Result::Ok(ok) => Ok(ok.data.as_ref().to_vec()),
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "READLINK", st)),
        }
    }

    /// Makes a symbolic link (an existing entry of that name is replaced).
    pub async fn symlink(&mut self, dir: &nfs_fh3, n: &[u8], target: &[u8]) -> Result<nfs_fh3> {
        self.remove(dir, n).await?;
        let args = nfs3::SYMLINK3args {
            where_: dirop(dir, n),
            symlink: symlinkdata3 {
                symlink_attributes: mode_attr(Some(0o777)),
                symlink_data: nfspath3(Opaque::borrowed(target)),
            },
        };
        match call!(self, "SYMLINK", symlink, &args)? {
            Nfs3Result::Ok(ok) => match ok.obj {
                Nfs3Option::Some(fh) => Ok(fh),
                Nfs3Option::None => Ok(self.lookup(dir, n).await?.map(|x| x.0).unwrap_or_default()),
            },
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "SYMLINK", st)),
        }
    }

    /// Bytes of the export available to us (FSSTAT `abytes`).
    pub async fn available(&mut self) -> Result<u64> {
        let args = nfs3::FSSTAT3args {
            fsroot: self.root.clone(),
        };
        match call!(self, "FSSTAT", fsstat, &args)? {
            Nfs3Result::Ok(ok) => Ok(ok.abytes),
            Nfs3Result::Err((st, _)) => Err(status_error(&self.server, "FSSTAT", st)),
        }
    }

    /// Copies the contents of file `src` into the new file `dst`.
    pub async fn copy_file(&mut self, src: &nfs_fh3, dst: &nfs_fh3) -> Result<u64> {
        let mut off = 0u64;
        loop {
            let (data, eof) = self.read(src, off).await?;
            if !data.is_empty() {
                self.write_all(dst, off, &data).await?;
                off += data.len() as u64;
            }
            if eof {
                break;
            }
        }
        self.commit(dst).await?;
        Ok(off)
    }

    /// Copies everything below directory `src` into directory `dst`:
    /// directories, regular files, symbolic links, with modes, owners and
    /// modification times. Other file types are skipped (logged).
    pub async fn copy_tree(&mut self, src: &nfs_fh3, dst: &nfs_fh3) -> Result<u64> {
        let mut bytes = 0;
        let mut stack = vec![(src.clone(), dst.clone())];
        while let Some((s, d)) = stack.pop() {
            for e in self.readdir(&s).await? {
                let a = &e.attr;
                let owner = Some((a.uid, a.gid));
                match a.type_ {
                    ftype3::NF3DIR => {
                        let fh = self.mkdir(&d, &e.name, a.mode & 0o7777).await?;
                        self.setattr(&fh, Some(a.mode & 0o7777), owner, None)
                            .await?;
                        stack.push((e.fh.clone(), fh));
                    }
                    ftype3::NF3REG => {
                        let fh = self.create(&d, &e.name, a.mode & 0o7777).await?;
                        bytes += self.copy_file(&e.fh, &fh).await?;
                        self.setattr(&fh, Some(a.mode & 0o7777), owner, Some(a.mtime))
                            .await?;
                    }
                    ftype3::NF3LNK => {
                        let target = self.readlink(&e.fh).await?;
                        self.symlink(&d, &e.name, &target).await?;
                    }
                    other => tracing::warn!(
                        name = %String::from_utf8_lossy(&e.name),
                        kind = %other,
                        "not copied: special file"
                    ),
                }
            }
        }
        Ok(bytes)
    }
}
