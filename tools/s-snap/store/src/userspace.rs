//! Userspace implementations of [`BlockIo`]: devices and a bounded
//! write-back cache that, like dm-bufio, may write dirty blocks early.

use crate::{BlockHandle, BlockIo, Error, META_BLOCK_SIZE};
use std::boxed::Box;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::vec;
use std::vec::Vec;

/// A byte-addressed device.
pub trait Disk {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `off`.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `off` (may sit in a volatile cache until `flush`).
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
}

fn range_err() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "access beyond device end")
}

fn check_range(size: u64, off: u64, len: usize) -> io::Result<(usize, usize)> {
    let end = off.checked_add(len as u64).ok_or_else(range_err)?;
    if end > size {
        return Err(range_err());
    }
    Ok((off as usize, end as usize))
}

/// A device in memory.
#[derive(Debug, Default)]
pub struct MemDisk {
    data: RefCell<Vec<u8>>,
}

impl MemDisk {
    /// A zeroed device of `size` bytes.
    pub fn new(size: usize) -> MemDisk {
        MemDisk {
            data: RefCell::new(vec![0; size]),
        }
    }
    /// A device with these contents.
    pub fn from_vec(v: Vec<u8>) -> MemDisk {
        MemDisk {
            data: RefCell::new(v),
        }
    }
    /// The contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.borrow().clone()
    }
    /// Mutable access to the contents (for corruption tests).
    pub fn with_mut<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        f(&mut self.data.borrow_mut())
    }
}

impl Disk for MemDisk {
    fn size(&self) -> u64 {
        self.data.borrow().len() as u64
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.data.borrow();
        let (s, e) = check_range(d.len() as u64, off, buf.len())?;
        buf.copy_from_slice(&d[s..e]);
        Ok(())
    }
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.data.borrow_mut();
        let (s, e) = check_range(d.len() as u64, off, data.len())?;
        d[s..e].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

const PAGE: u64 = 4096;

/// A sparse device in memory: only written 4 KiB pages take memory.
#[derive(Debug)]
pub struct SparseDisk {
    size: u64,
    pages: RefCell<HashMap<u64, Box<[u8]>>>,
}

impl SparseDisk {
    /// A zeroed device of `size` bytes.
    pub fn new(size: u64) -> SparseDisk {
        SparseDisk {
            size,
            pages: RefCell::new(HashMap::new()),
        }
    }
    /// Bytes of memory held by written pages.
    pub fn resident_bytes(&self) -> u64 {
        self.pages.borrow().len() as u64 * PAGE
    }
}

impl Disk for SparseDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.size, off, buf.len())?;
        let pages = self.pages.borrow();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let (p, po) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - po).min(buf.len() - done);
            match pages.get(&p) {
                Some(pg) => buf[done..done + n].copy_from_slice(&pg[po..po + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        check_range(self.size, off, data.len())?;
        let mut pages = self.pages.borrow_mut();
        let mut done = 0usize;
        while done < data.len() {
            let pos = off + done as u64;
            let (p, po) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - po).min(data.len() - done);
            let pg = pages
                .entry(p)
                .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            pg[po..po + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A file or block device.
#[derive(Debug)]
pub struct FileDisk {
    file: File,
    size: u64,
}

impl FileDisk {
    /// Opens `path` (read-only unless `write`).
    pub fn open(path: &Path, write: bool) -> io::Result<FileDisk> {
        let mut file = OpenOptions::new().read(true).write(write).open(path)?;
        let size = file.seek(SeekFrom::End(0))?;
        Ok(FileDisk { file, size })
    }
    /// Wraps an open file of `size` bytes.
    pub fn from_file(file: File, size: u64) -> FileDisk {
        FileDisk { file, size }
    }
}

impl Disk for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.size, off, buf.len())?;
        self.file.read_exact_at(buf, off)
    }
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        check_range(self.size, off, data.len())?;
        self.file.write_all_at(data, off)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// One event in the write stream of a [`CrashDisk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A completed write (volatile until the next flush).
    Write {
        /// Byte offset.
        off: u64,
        /// Data written.
        data: Vec<u8>,
    },
    /// A completed cache flush: every earlier write is durable.
    Flush,
}

/// A device with a volatile write cache that records its write stream, so
/// that tests can rebuild the durable state at any point of a power loss.
#[derive(Debug)]
pub struct CrashDisk {
    initial: Vec<u8>,
    view: RefCell<Vec<u8>>,
    log: RefCell<Vec<Event>>,
}

/// How unflushed writes survive a simulated power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Survival {
    /// All unflushed writes are lost.
    DropAll,
    /// A pseudo-random subset (by seed) of the unflushed writes survives.
    Subset(u64),
    /// A pseudo-random subset survives and the last write is torn: only
    /// its first (`true`) or second (`false`) half reached the disk.
    TornLast(u64, bool),
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl CrashDisk {
    /// A device whose durable contents start as `initial`.
    pub fn new(initial: Vec<u8>) -> CrashDisk {
        CrashDisk {
            view: RefCell::new(initial.clone()),
            initial,
            log: RefCell::new(Vec::new()),
        }
    }
    /// Number of events so far.
    pub fn log_len(&self) -> usize {
        self.log.borrow().len()
    }
    /// A copy of the event log.
    pub fn log(&self) -> Vec<Event> {
        self.log.borrow().clone()
    }
    /// The initial durable contents.
    pub fn initial(&self) -> &[u8] {
        &self.initial
    }

    /// Durable contents after a power loss right after the first `k`
    /// events of `log`.
    pub fn image_at(initial: &[u8], log: &[Event], k: usize, how: Survival) -> Vec<u8> {
        let k = k.min(log.len());
        let last_flush = log[..k]
            .iter()
            .rposition(|e| *e == Event::Flush)
            .map(|p| p + 1)
            .unwrap_or(0);
        let mut img = initial.to_vec();
        for e in &log[..last_flush] {
            if let Event::Write { off, data } = e {
                img[*off as usize..*off as usize + data.len()].copy_from_slice(data);
            }
        }
        let window = &log[last_flush..k];
        let nw = window.len();
        for (j, e) in window.iter().enumerate() {
            let Event::Write { off, data } = e else {
                continue;
            };
            let off = *off as usize;
            let keep = match how {
                Survival::DropAll => false,
                Survival::Subset(seed) | Survival::TornLast(seed, _) => {
                    let mut s = seed ^ (j as u64).wrapping_mul(0x1234_5678_9ABC_DEF1);
                    splitmix(&mut s) & 1 == 1
                }
            };
            match how {
                Survival::TornLast(_, first) if j + 1 == nw => {
                    let half = (data.len() / 2).max(1).min(data.len());
                    if first {
                        img[off..off + half].copy_from_slice(&data[..half]);
                    } else {
                        img[off + half..off + data.len()].copy_from_slice(&data[half..]);
                    }
                }
                _ if keep => img[off..off + data.len()].copy_from_slice(data),
                _ => {}
            }
        }
        img
    }
}

impl Disk for CrashDisk {
    fn size(&self) -> u64 {
        self.initial.len() as u64
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let v = self.view.borrow();
        let (s, e) = check_range(v.len() as u64, off, buf.len())?;
        buf.copy_from_slice(&v[s..e]);
        Ok(())
    }
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        let mut v = self.view.borrow_mut();
        let (s, e) = check_range(v.len() as u64, off, data.len())?;
        v[s..e].copy_from_slice(data);
        self.log.borrow_mut().push(Event::Write {
            off,
            data: data.to_vec(),
        });
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.log.borrow_mut().push(Event::Flush);
        Ok(())
    }
}

/// Counters of a [`Cache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Blocks read from the device.
    pub reads: u64,
    /// Blocks written to the device.
    pub writes: u64,
    /// Dirty blocks written before `write_dirty` (eviction / chaos).
    pub early_writes: u64,
    /// Cache hits.
    pub hits: u64,
    /// Flushes issued.
    pub flushes: u64,
    /// Most handles held at the same time.
    pub max_held: u64,
}

struct Entry {
    data: Option<Box<[u8]>>,
    dirty: bool,
    verified: bool,
    tick: u64,
}

struct CacheState {
    map: HashMap<u64, Entry>,
    /// Unheld entries by last use.
    lru: BTreeMap<u64, u64>,
    tick: u64,
    capacity: usize,
    stats: CacheStats,
    write_error: bool,
    chaos: Option<(u64, u32)>,
    held: u64,
}

/// A bounded block cache over a [`Disk`] implementing [`BlockIo`].
///
/// Least recently used blocks are evicted when more than `capacity` are
/// cached; dirty ones are written first (early write-back, as dm-bufio
/// does). Holding two handles to one block panics: the store must never do
/// that.
pub struct Cache<D: Disk> {
    disk: D,
    bs: usize,
    chunk_size: usize,
    nblocks: u64,
    st: RefCell<CacheState>,
}

impl<D: Disk> Cache<D> {
    /// A cache of `capacity` metadata blocks of [`META_BLOCK_SIZE`] bytes
    /// over `disk`, whose data chunks ([`Cache::write_data`],
    /// [`Cache::read_data`]) are `chunk_size` bytes.
    pub fn new(disk: D, chunk_size: usize, capacity: usize) -> Cache<D> {
        let nblocks = disk.size() / META_BLOCK_SIZE as u64;
        Cache {
            disk,
            bs: META_BLOCK_SIZE,
            chunk_size,
            nblocks,
            st: RefCell::new(CacheState {
                map: HashMap::new(),
                lru: BTreeMap::new(),
                tick: 0,
                capacity: capacity.max(4),
                stats: CacheStats::default(),
                write_error: false,
                chaos: None,
                held: 0,
            }),
        }
    }

    /// Additionally writes a released dirty block early, on average once in
    /// `one_in` releases (pseudo-random from `seed`).
    pub fn set_writeback_chaos(&self, seed: u64, one_in: u32) {
        self.st.borrow_mut().chaos = Some((seed, one_in.max(1)));
    }

    /// The device.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// Returns the device (dirty blocks are dropped, as at a crash).
    pub fn into_disk(self) -> D {
        self.disk
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        self.st.borrow().stats
    }

    /// Drops every cached block (dirty ones are lost).
    pub fn drop_all(&self) {
        let mut st = self.st.borrow_mut();
        st.map.clear();
        st.lru.clear();
    }

    /// Writes data (not metadata) to a chunk, bypassing the cache, like
    /// kcopyd does. Panics if the chunk has a dirty cached block: a later
    /// write-back would overwrite the data, which the store must prevent.
    pub fn write_data(&self, chunk: u64, off: usize, data: &[u8]) -> io::Result<()> {
        let per_chunk = (self.chunk_size / self.bs) as u64;
        {
            let mut st = self.st.borrow_mut();
            for nr in chunk * per_chunk..(chunk + 1) * per_chunk {
                if let Some(e) = st.map.get(&nr) {
                    assert!(
                        e.data.is_some() && !e.dirty,
                        "data write to chunk {chunk} whose block {nr} has a held or dirty \
                         metadata buffer"
                    );
                    let t = e.tick;
                    st.lru.remove(&t);
                    st.map.remove(&nr);
                }
            }
        }
        let pos = chunk
            .checked_mul(self.chunk_size as u64)
            .and_then(|p| p.checked_add(off as u64))
            .ok_or_else(range_err)?;
        self.disk.write_at(pos, data)
    }

    /// Reads data of a chunk from the device.
    pub fn read_data(&self, chunk: u64, off: usize, buf: &mut [u8]) -> io::Result<()> {
        let pos = chunk
            .checked_mul(self.chunk_size as u64)
            .and_then(|p| p.checked_add(off as u64))
            .ok_or_else(range_err)?;
        self.disk.read_at(pos, buf)
    }

    fn write_block(&self, nr: u64, data: &[u8]) -> bool {
        self.disk.write_at(nr * self.bs as u64, data).is_ok()
    }

    fn evict(&self, st: &mut CacheState) {
        while st.map.len() > st.capacity {
            let Some((&tick, &nr)) = st.lru.iter().next() else {
                break;
            };
            st.lru.remove(&tick);
            if let Some(e) = st.map.remove(&nr) {
                if e.dirty {
                    if let Some(d) = &e.data {
                        if !self.write_block(nr, d) {
                            st.write_error = true;
                        }
                        st.stats.writes += 1;
                        st.stats.early_writes += 1;
                    }
                }
            }
        }
    }

    fn get(&self, nr: u64, read: bool) -> Result<CacheBlock<'_, D>, Error> {
        if nr >= self.nblocks {
            return Err(Error::Io("block beyond the device end"));
        }
        let mut st = self.st.borrow_mut();
        if let Some(e) = st.map.get_mut(&nr) {
            let data = e
                .data
                .take()
                .unwrap_or_else(|| panic!("store holds two handles to block {nr}"));
            let (tick, verified) = (e.tick, e.verified);
            st.lru.remove(&tick);
            st.stats.hits += 1;
            st.held += 1;
            st.stats.max_held = st.stats.max_held.max(st.held);
            return Ok(CacheBlock {
                cache: self,
                nr,
                data,
                dirty: false,
                verified,
            });
        }
        let mut data = vec![0x5Au8; self.bs].into_boxed_slice();
        if read {
            if self.disk.read_at(nr * self.bs as u64, &mut data).is_err() {
                return Err(Error::Io("read failed"));
            }
            st.stats.reads += 1;
        }
        st.map.insert(
            nr,
            Entry {
                data: None,
                dirty: false,
                verified: false,
                tick: 0,
            },
        );
        self.evict(&mut st);
        st.held += 1;
        st.stats.max_held = st.stats.max_held.max(st.held);
        Ok(CacheBlock {
            cache: self,
            nr,
            data,
            dirty: false,
            verified: false,
        })
    }

    fn release(&self, nr: u64, data: Box<[u8]>, dirty: bool, verified: bool) {
        let mut st = self.st.borrow_mut();
        st.held -= 1;
        st.tick += 1;
        let tick = st.tick;
        let mut write_now = false;
        if let Some((seed, one_in)) = st.chaos {
            let mut s = seed ^ tick.wrapping_mul(0x2545_F491_4F6C_DD1D);
            write_now = splitmix(&mut s) % one_in as u64 == 0;
        }
        let Some(e) = st.map.get_mut(&nr) else {
            panic!("released block {nr} is not cached");
        };
        e.dirty |= dirty;
        e.verified = verified;
        e.tick = tick;
        let early = write_now && e.dirty;
        if early {
            e.dirty = false;
        }
        e.data = Some(data);
        st.lru.insert(tick, nr);
        if early {
            let ok = {
                let e = &st.map[&nr];
                self.write_block(nr, e.data.as_deref().unwrap_or(&[]))
            };
            if !ok {
                st.write_error = true;
            }
            st.stats.writes += 1;
            st.stats.early_writes += 1;
        }
        self.evict(&mut st);
    }
}

/// A held block of a [`Cache`].
pub struct CacheBlock<'a, D: Disk> {
    cache: &'a Cache<D>,
    nr: u64,
    data: Box<[u8]>,
    dirty: bool,
    verified: bool,
}

impl<D: Disk> std::ops::Deref for CacheBlock<'_, D> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl<D: Disk> std::ops::DerefMut for CacheBlock<'_, D> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl<D: Disk> BlockHandle for CacheBlock<'_, D> {
    fn mark_dirty(&mut self) {
        self.dirty = true;
    }
    fn is_verified(&self) -> bool {
        self.verified
    }
    fn set_verified(&mut self) {
        self.verified = true;
    }
}

impl<D: Disk> Drop for CacheBlock<'_, D> {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        self.cache.release(self.nr, data, self.dirty, self.verified);
    }
}

impl<D: Disk> BlockIo for Cache<D> {
    type Block<'a>
        = CacheBlock<'a, D>
    where
        Self: 'a;

    fn block_size(&self) -> usize {
        self.bs
    }
    fn nr_blocks(&self) -> u64 {
        self.nblocks
    }
    fn read(&self, nr: u64) -> Result<CacheBlock<'_, D>, Error> {
        self.get(nr, true)
    }
    fn new_block(&self, nr: u64) -> Result<CacheBlock<'_, D>, Error> {
        self.get(nr, false)
    }
    fn write_dirty(&self) -> Result<(), Error> {
        self.write_dirty_no_flush()?;
        // As dm_bufio_write_dirty_buffers() does.
        self.flush()
    }
    fn flush(&self) -> Result<(), Error> {
        self.st.borrow_mut().stats.flushes += 1;
        self.disk.flush().map_err(|_| Error::Io("flush failed"))
    }
    fn commit_block(&self, block: CacheBlock<'_, D>) -> Result<(), Error> {
        assert!(
            !block.dirty,
            "commit block {} marked dirty: write-back could write it before the rest",
            block.nr
        );
        // Not released into the cache: the kernel's cache keeps the block's
        // previous contents (the in-progress image, written back below) and
        // then forgets it, and a release here could write the new contents
        // early (chaos write-back), before the rest.
        let (nr, data) = self.take_out(block);
        self.write_dirty_no_flush()?;
        self.write_through(nr, &data)
    }
    fn write_durably(&self, nr: u64, data: &[u8]) -> Result<(), Error> {
        {
            let mut st = self.st.borrow_mut();
            if let Some(e) = st.map.get(&nr) {
                assert!(
                    e.data.is_some() && !e.dirty,
                    "block {nr} written around the cache is held or dirty"
                );
                // The clean copy would be stale after the write.
                let tick = e.tick;
                st.lru.remove(&tick);
                st.map.remove(&nr);
            }
        }
        self.write_through(nr, data)
    }
    fn crc32c(&self, seed: u32, data: &[u8]) -> u32 {
        !crc32c::crc32c_append(!seed, data)
    }
}

impl<D: Disk> Cache<D> {
    /// Takes a held block out of the cache, without releasing it.
    fn take_out(&self, block: CacheBlock<'_, D>) -> (u64, Box<[u8]>) {
        let nr = block.nr;
        let mut block = block;
        let data = std::mem::take(&mut block.data);
        std::mem::forget(block);
        let mut st = self.st.borrow_mut();
        st.held -= 1;
        st.map.remove(&nr);
        (nr, data)
    }

    /// Writes `data` to block `nr` with REQ_PREFLUSH | REQ_FUA: a flush,
    /// the write, and a flush after it that stands in for REQ_FUA (nothing
    /// else is written in between).
    fn write_through(&self, nr: u64, data: &[u8]) -> Result<(), Error> {
        self.flush()?;
        let ok = self.write_block(nr, data);
        self.st.borrow_mut().stats.writes += 1;
        if !ok {
            return Err(Error::Io("write failed"));
        }
        self.flush()
    }

    /// Writes every dirty block, without a flush.
    fn write_dirty_no_flush(&self) -> Result<(), Error> {
        let mut st = self.st.borrow_mut();
        let mut dirty: Vec<u64> = st
            .map
            .iter()
            .filter(|(_, e)| e.dirty)
            .map(|(&nr, _)| nr)
            .collect();
        dirty.sort_unstable();
        for nr in dirty {
            let Some(e) = st.map.get_mut(&nr) else {
                continue;
            };
            let Some(d) = e.data.as_deref() else {
                panic!("write_dirty while dirty block {nr} is held");
            };
            let ok = self.disk.write_at(nr * self.bs as u64, d).is_ok();
            e.dirty = false;
            st.stats.writes += 1;
            if !ok {
                st.write_error = true;
            }
        }
        if std::mem::take(&mut st.write_error) {
            return Err(Error::Io("write failed"));
        }
        Ok(())
    }
}

/// The cache as a device of the store's model test: tags in the first
/// bytes of data chunks, a crash loses the dirty blocks not written yet.
#[cfg(feature = "model-test")]
impl<D: Disk> crate::model_test::TestDevice for Cache<D> {
    fn write_tag(&self, chunk: u64, tag: u64) -> Result<(), Error> {
        self.write_data(chunk, 0, &tag.to_le_bytes())
            .map_err(|_| Error::Io("data chunk write"))
    }

    fn read_tag(&self, chunk: u64) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        self.read_data(chunk, 0, &mut b)
            .map_err(|_| Error::Io("data chunk read"))?;
        Ok(u64::from_le_bytes(b))
    }

    fn crash(&self) {
        self.drop_all();
    }
}
