//! The thin FUSE adapter: turns kernel requests into [`Core`] calls and answers. Requests
//! that wait on the network are answered from tasks on the runtime, never from the FUSE
//! thread.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use tracing::debug;

use super::core::{Core, Opened, TTL};

/// The filesystem handed to fuser.
pub struct D2dFs {
    core: Arc<Core>,
    /// Writers bypass the page cache (kernels from 6.6; see [`D2dFs::spool_open_flags`]).
    direct_writes: bool,
}

impl D2dFs {
    pub fn new(core: Arc<Core>) -> Self {
        Self {
            core,
            direct_writes: false,
        }
    }

    /// How a handle on an own offer is opened. A writer's bytes go straight to the spool
    /// (direct I/O): through the page cache they would be copied once more and held twice,
    /// in the mount's cache and in the spool's. A 1 GiB `cp` into a room went from 0.4-0.5x
    /// to 0.86x the speed of the same copy into tmpfs.
    fn spool_open_flags(&self, write: bool) -> FopenFlags {
        if write && self.direct_writes {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    // Names on the wire are UTF-8: others cannot be offered and are never shown.
    name.to_str().ok_or(Errno::EINVAL)
}

fn writes(flags: OpenFlags) -> bool {
    !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY)
}

/// Answers an xattr request for `value` (size probe or data).
fn reply_bytes(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl Filesystem for D2dFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Larger requests and more of them in flight: reads are answered asynchronously
        // from the cache (see the fuser notes: 64 in the background beats the default 12).
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        // Writers get direct I/O only where the kernel still lets them `mmap` the file.
        self.direct_writes = config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match name_str(name).and_then(|name| self.core.lookup(parent.0, name)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.core.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Only the size of a file being written changes; modes and times are the offer's.
        let result = match size {
            Some(size) => self.core.truncate(ino.0, size),
            None => self.core.getattr(ino.0),
        };
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.core.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(errno) => reply.error(errno),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        // Rooms are joined, not made; offers are files.
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name_str(name).and_then(|name| self.core.unlink(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match name_str(link_name).and_then(|name| self.core.symlink(parent.0, name, target)) {
            // TTL zero: the next lookup must find the offer, not this symlink.
            Ok(attr) => reply.entry(&std::time::Duration::ZERO, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        // The name went out with the offer.
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.core.open(ino.0, writes(flags)) {
            Ok(Opened::Now(fh)) => {
                reply.opened(FileHandle(fh), self.spool_open_flags(writes(flags)))
            }
            Ok(Opened::Accept(offer)) => {
                let core = self.core.clone();
                self.core.runtime().spawn(async move {
                    match core.accept(&offer).await {
                        // Offers never change: the page cache may keep what was read.
                        Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                        Err(errno) => reply.error(errno),
                    }
                });
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.core.offer(ino.0) {
            Some(offer) => {
                let core = self.core.clone();
                self.core.runtime().spawn(async move {
                    match core.read_offer(&offer, offset, size).await {
                        Ok(data) => reply.data(&data),
                        Err(errno) => reply.error(errno),
                    }
                });
            }
            None => match self.core.read_local(ino.0, offset, size) {
                Ok(data) => reply.data(&data),
                Err(errno) => reply.error(errno),
            },
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.core.write(ino.0, offset, data) {
            Ok(written) => reply.written(written),
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.core.readdir(ino.0) {
            Ok(entries) => entries,
            Err(errno) => return reply.error(errno),
        };
        let dots = [
            (ino.0, fuser::FileType::Directory, ".".to_owned()),
            (1, fuser::FileType::Directory, "..".to_owned()),
        ];
        for (index, (child, kind, name)) in dots
            .into_iter()
            .chain(entries)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), index as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.core.statfs() {
            Some(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                255,
                s.f_frsize as u32,
            ),
            None => reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let attrs = match self.core.xattrs(ino.0) {
            Ok(attrs) => attrs,
            Err(errno) => return reply.error(errno),
        };
        match attrs.iter().find(|(key, _)| OsStr::new(key) == name) {
            Some((_, value)) => reply_bytes(reply, size, value.as_bytes()),
            None => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.core.xattrs(ino.0) {
            Ok(attrs) => {
                let mut list = Vec::new();
                for (key, _) in attrs {
                    list.extend_from_slice(key.as_bytes());
                    list.push(0);
                }
                reply_bytes(reply, size, &list);
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match name_str(name).and_then(|name| self.core.create(parent.0, name)) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                self.spool_open_flags(true),
            ),
            Err(errno) => {
                debug!(?name, ?errno, "create refused");
                reply.error(errno)
            }
        }
    }
}
