//! Snapshots of NFS volumes: a tar archive (GNU format, uncompressed) of
//! the volume's directory, written to and read from the export over NFS in
//! bounded chunks, so neither side needs the whole archive in memory.
//!
//! Directories, regular files and symbolic links are kept with mode, owner
//! and modification time; names and link targets longer than the header
//! fields use GNU long-name records. Restoring refuses entries whose paths
//! would leave the destination.

use std::collections::HashMap;

use nfs3_client::nfs3_types::nfs3::{ftype3, nfs_fh3, nfstime3};
use tar::{EntryType, Header};

use super::client::Nfs;
use crate::error::{Error, Result};

const BLOCK: usize = 512;
/// Flush the write buffer to the server at this size.
const FLUSH_AT: usize = 1 << 20;

struct Writer {
    fh: nfs_fh3,
    off: u64,
    buf: Vec<u8>,
}

impl Writer {
    async fn put(&mut self, nfs: &mut Nfs, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= FLUSH_AT {
            self.flush(nfs).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, nfs: &mut Nfs) -> Result<()> {
        if !self.buf.is_empty() {
            nfs.write_all(&self.fh, self.off, &self.buf).await?;
            self.off += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    async fn pad(&mut self, nfs: &mut Nfs, len: u64) -> Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.put(nfs, &[0u8; BLOCK][..BLOCK - rem]).await?;
        }
        Ok(())
    }

    /// A GNU long-name ('L') or long-link ('K') record for `value`.
    async fn long_record(&mut self, nfs: &mut Nfs, kind: EntryType, value: &[u8]) -> Result<()> {
        let mut h = Header::new_gnu();
        let name = b"././@LongLink";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(value.len() as u64 + 1);
        h.set_cksum();
        self.put(nfs, h.as_bytes()).await?;
        self.put(nfs, value).await?;
        self.put(nfs, &[0]).await?;
        self.pad(nfs, value.len() as u64 + 1).await
    }

    async fn header(
        &mut self,
        nfs: &mut Nfs,
        mut h: Header,
        path: &[u8],
        link: Option<&[u8]>,
    ) -> Result<()> {
        if path.len() > 100 {
            self.long_record(nfs, EntryType::GNULongName, path).await?;
        }
        let n = path.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&path[..n]);
        if let Some(l) = link {
            if l.len() > 100 {
                self.long_record(nfs, EntryType::GNULongLink, l).await?;
            }
            let n = l.len().min(100);
            h.as_old_mut().linkname[..n].copy_from_slice(&l[..n]);
        }
        h.set_cksum();
        self.put(nfs, h.as_bytes()).await
    }
}

fn base_header(kind: EntryType, mode: u32, uid: u32, gid: u32, mtime: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(mtime.into());
    h.set_size(size);
    h
}

/// Writes an archive of everything below directory `src` into the (new,
/// empty) file `dst`, commits it, and returns its size in bytes.
pub async fn write(nfs: &mut Nfs, src: &nfs_fh3, dst: &nfs_fh3) -> Result<u64> {
    let mut w = Writer {
        fh: dst.clone(),
        off: 0,
        buf: Vec::with_capacity(FLUSH_AT + BLOCK * 4),
    };
    let mut stack: Vec<(nfs_fh3, Vec<u8>)> = vec![(src.clone(), Vec::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut entries = nfs.readdir(&dir).await?;
        // A stable order makes archives of equal trees equal.
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            let mut path = prefix.clone();
            path.extend_from_slice(&e.name);
            let a = &e.attr;
            match a.type_ {
                ftype3::NF3DIR => {
                    path.push(b'/');
                    let h = base_header(
                        EntryType::Directory,
                        a.mode,
                        a.uid,
                        a.gid,
                        a.mtime.seconds,
                        0,
                    );
                    w.header(nfs, h, &path, None).await?;
                    stack.push((e.fh.clone(), path));
                }
                ftype3::NF3REG => {
                    let h = base_header(
                        EntryType::Regular,
                        a.mode,
                        a.uid,
                        a.gid,
                        a.mtime.seconds,
                        a.size,
                    );
                    w.header(nfs, h, &path, None).await?;
                    // Write exactly the size announced in the header even if
                    // the file changes while we read it.
                    let mut off = 0u64;
                    while off < a.size {
                        let (data, eof) = nfs.read(&e.fh, off).await?;
                        let take = data.len().min((a.size - off) as usize);
                        w.put(nfs, &data[..take]).await?;
                        off += take as u64;
                        if eof || take == 0 {
                            break;
                        }
                    }
                    while off < a.size {
                        let n = ((a.size - off) as usize).min(FLUSH_AT);
                        w.put(nfs, &vec![0u8; n]).await?;
                        off += n as u64;
                    }
                    w.pad(nfs, a.size).await?;
                }
                ftype3::NF3LNK => {
                    let target = nfs.readlink(&e.fh).await?;
                    let h =
                        base_header(EntryType::Symlink, a.mode, a.uid, a.gid, a.mtime.seconds, 0);
                    w.header(nfs, h, &path, Some(&target)).await?;
                }
                other => tracing::warn!(
                    name = %String::from_utf8_lossy(&path),
                    kind = %other,
                    "not archived: special file"
                ),
            }
        }
    }
    w.put(nfs, &[0u8; BLOCK * 2]).await?;
    w.flush(nfs).await?;
    nfs.commit(dst).await?;
    Ok(w.off)
}

struct Reader {
    fh: nfs_fh3,
    off: u64,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl Reader {
    /// Exactly `n` bytes, or an error naming a truncated archive.
    async fn take(&mut self, nfs: &mut Nfs, n: usize) -> Result<Vec<u8>> {
        while self.buf.len() - self.pos < n {
            if self.eof {
                return Err(Error::Internal("snapshot archive is truncated".into()));
            }
            let (data, eof) = nfs.read(&self.fh, self.off).await?;
            self.off += data.len() as u64;
            self.eof = eof;
            self.buf.drain(..self.pos);
            self.pos = 0;
            self.buf.extend_from_slice(&data);
        }
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(out)
    }

    /// Skips the padding after `size` bytes of data already taken.
    async fn skip_pad(&mut self, nfs: &mut Nfs, size: u64) -> Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.take(nfs, BLOCK - rem).await?;
        }
        Ok(())
    }

    async fn skip_padded(&mut self, nfs: &mut Nfs, size: u64) -> Result<()> {
        let mut left = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        while left > 0 {
            let n = left.min(FLUSH_AT as u64) as usize;
            self.take(nfs, n).await?;
            left -= n as u64;
        }
        Ok(())
    }
}

fn bad(why: impl std::fmt::Display) -> Error {
    Error::Internal(format!("snapshot archive: {why}"))
}

/// Splits an archive path into safe components; refuses absolute paths and
/// `..`, which would write outside the destination.
fn components(path: &[u8]) -> Result<Vec<Vec<u8>>> {
    if path.first() == Some(&b'/') {
        return Err(bad(format!(
            "absolute path {:?}",
            String::from_utf8_lossy(path)
        )));
    }
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(bad(format!(
                    "path {:?} leaves the volume",
                    String::from_utf8_lossy(path)
                )))
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn nul_trimmed(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(p) = v.iter().position(|b| *b == 0) {
        v.truncate(p);
    }
    v
}

/// Extracts the archive in file `src` into directory `dst`.
pub async fn restore(nfs: &mut Nfs, src: &nfs_fh3, dst: &nfs_fh3) -> Result<()> {
    let mut r = Reader {
        fh: src.clone(),
        off: 0,
        buf: Vec::new(),
        pos: 0,
        eof: false,
    };
    let mut dirs: HashMap<Vec<Vec<u8>>, nfs_fh3> = HashMap::new();
    dirs.insert(Vec::new(), dst.clone());
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    loop {
        let block = r.take(nfs, BLOCK).await?;
        if block.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let h = Header::from_byte_slice(&block);
        let stored = h.cksum().map_err(bad)?;
        let mut check = h.clone();
        check.set_cksum();
        if check.cksum().map_err(bad)? != stored {
            return Err(bad("header checksum mismatch"));
        }
        let size = h.entry_size().map_err(bad)?;
        let kind = h.entry_type();
        if kind == EntryType::GNULongName || kind == EntryType::GNULongLink {
            if size > 64 * 1024 {
                return Err(bad("long name record over 64 KiB"));
            }
            let v = nul_trimmed(r.take(nfs, size as usize).await?);
            r.skip_pad(nfs, size).await?;
            if kind == EntryType::GNULongName {
                long_name = Some(v);
            } else {
                long_link = Some(v);
            }
            continue;
        }
        let path = long_name
            .take()
            .unwrap_or_else(|| h.path_bytes().into_owned());
        let link = long_link
            .take()
            .or_else(|| h.link_name_bytes().map(|l| l.into_owned()));
        let parts = components(&path)?;
        let mode = h.mode().map_err(bad)? & 0o7777;
        let owner = Some((h.uid().map_err(bad)? as u32, h.gid().map_err(bad)? as u32));
        let mtime = nfstime3 {
            seconds: h.mtime().map_err(bad)? as u32,
            nseconds: 0,
        };
        let Some((last, parent_parts)) = parts.split_last() else {
            r.skip_padded(nfs, size).await?;
            continue;
        };
        let parent = ensure_dir(nfs, &mut dirs, parent_parts).await?;
        match kind {
            EntryType::Directory => {
                let fh = nfs.mkdir(&parent, last, mode).await?;
                nfs.setattr(&fh, Some(mode), owner, None).await?;
                dirs.insert(parts.clone(), fh);
                r.skip_padded(nfs, size).await?;
            }
            EntryType::Regular | EntryType::Continuous => {
                let fh = nfs.create(&parent, last, mode).await?;
                let mut off = 0u64;
                while off < size {
                    let n = (size - off).min(FLUSH_AT as u64) as usize;
                    let data = r.take(nfs, n).await?;
                    nfs.write_all(&fh, off, &data).await?;
                    off += n as u64;
                }
                r.skip_pad(nfs, size).await?;
                nfs.commit(&fh).await?;
                nfs.setattr(&fh, Some(mode), owner, Some(mtime)).await?;
            }
            EntryType::Symlink => {
                let target = link.ok_or_else(|| bad("symbolic link without a target"))?;
                nfs.symlink(&parent, last, &target).await?;
                r.skip_padded(nfs, size).await?;
            }
            other => {
                tracing::warn!(
                    name = %String::from_utf8_lossy(&path),
                    kind = ?other,
                    "not restored: unsupported entry type"
                );
                r.skip_padded(nfs, size).await?;
            }
        }
    }
}

async fn ensure_dir(
    nfs: &mut Nfs,
    dirs: &mut HashMap<Vec<Vec<u8>>, nfs_fh3>,
    parts: &[Vec<u8>],
) -> Result<nfs_fh3> {
    if let Some(fh) = dirs.get(parts) {
        return Ok(fh.clone());
    }
    let mut cur = dirs
        .get(&Vec::new())
        .cloned()
        .ok_or_else(|| bad("no destination"))?;
    for i in 0..parts.len() {
        let key = parts[..=i].to_vec();
        cur = match dirs.get(&key) {
            Some(fh) => fh.clone(),
            None => {
                let fh = nfs.mkdir(&cur, &parts[i], 0o755).await?;
                dirs.insert(key, fh.clone());
                fh
            }
        };
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_cannot_leave_the_volume() {
        assert_eq!(components(b"a/b/c").expect("ok").len(), 3);
        assert_eq!(
            components(b"./a//b/").expect("ok"),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../x").is_err());
    }
}
