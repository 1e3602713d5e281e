//! The disk cache: segment files in one directory that every worker of this machine
//! shares and that outlives them.
//!
//! It owns the directory's layout and its three promises: nothing derived from a URL
//! names a path (files are named by a hash of the URL and range, and the directory is a
//! capability, so no name can leave it); a file is either complete and checked or not
//! served (written under a temporary name and renamed, carrying its length and SHA-256,
//! which every read verifies; a file that fails is deleted); the directory stays under
//! its size cap whatever the policy asks for (least recently used files go first).
//! Workers fetching the same segment take turns on a per-segment lock file, so the
//! second finds the first's file instead of asking the origin again; a lock dies with
//! its holder, kill -9 included.
//!
//! It never decides what to cache or evict (the policy does) and never touches a path
//! outside its directory. Its calls block: run them off the event loop (the data
//! plane does, serving included).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, File, OpenOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::wire::ByteRange;

/// What a cache file starts with; the version is in it.
const MAGIC: &[u8; 8] = b"SPSEG01\n";
/// Magic, then the length of the data (u64, little-endian), then its SHA-256.
const HEADER_BYTES: usize = 8 + 8 + 32;
const SEGMENT_SUFFIX: &str = ".seg";
const LOCK_SUFFIX: &str = ".lock";
const PARTIAL_SUFFIX: &str = ".part";

/// Where the cache lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCacheConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

#[derive(Debug)]
pub struct DiskCache {
    dir: Dir,
    max_bytes: u64,
    /// The directory's size as last measured: measuring lists every file.
    measured: std::sync::Mutex<Measured>,
}

#[derive(Debug, Default)]
struct Measured {
    at: Option<std::time::Instant>,
    size: u64,
    /// A measurement is under way (so reports do not start another).
    measuring: bool,
}

/// How long a measured size of the cache is reported before measuring again.
const SIZE_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Held while a worker looks for, fetches or writes one segment; released on drop or
/// when the process dies.
#[derive(Debug)]
pub struct KeyLock(#[allow(dead_code)] std::fs::File);

/// A cache file's name stem: the SHA-256 of what identifies the segment.
pub fn key(url: &str, range: Option<ByteRange>) -> String {
    let mut hash = Sha256::new();
    hash.update(url.as_bytes());
    if let Some(ByteRange { start, end }) = range {
        hash.update(format!("\n{start}-{end}").as_bytes());
    }
    hex(&hash.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

static PARTIALS: AtomicU64 = AtomicU64::new(0);

impl DiskCache {
    /// Opens (creating it if needed) the cache directory, removes what writers that
    /// died left half-written, and measures it (so the first figure reported is true).
    pub fn open(config: &DiskCacheConfig) -> std::io::Result<DiskCache> {
        std::fs::create_dir_all(&config.dir)?;
        let dir = Dir::open_ambient_dir(&config.dir, ambient_authority())?;
        let cache = DiskCache { dir, max_bytes: config.max_bytes, measured: Default::default() };
        cache.remove_abandoned_partials();
        cache.measure();
        Ok(cache)
    }

    fn remove_abandoned_partials(&self) {
        let Ok(entries) = self.dir.entries() else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(PARTIAL_SUFFIX).and_then(|n| n.split('.').next())
            else {
                continue;
            };
            // Nobody holds the key's lock: whoever wrote this is gone.
            if let Ok(Some(lock)) = self.try_lock(key) {
                let _ = self.dir.remove_file(&name);
                self.unlock(key, lock);
            }
        }
    }

    /// The segment's lock, or `None` while another worker (or task) holds it.
    ///
    /// Lock files are deleted by whoever holds them when done, so they do not pile up.
    /// A lock taken on a file that was deleted (or replaced) meanwhile guards nothing,
    /// so it only counts if the name still leads to the file that was locked.
    pub fn try_lock(&self, key: &str) -> std::io::Result<Option<KeyLock>> {
        use std::os::unix::fs::MetadataExt;
        let file = self.lock_file(key)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let locked = file.metadata()?.ino();
        let current =
            self.dir.open(format!("{key}{LOCK_SUFFIX}")).and_then(|f| f.into_std().metadata());
        match current {
            Ok(current) if current.ino() == locked => Ok(Some(KeyLock(file))),
            _ => Ok(None),
        }
    }

    /// Releases a segment's lock, deleting its lock file first (safe while held: see
    /// [`DiskCache::try_lock`]).
    pub fn unlock(&self, key: &str, lock: KeyLock) {
        let _ = self.dir.remove_file(format!("{key}{LOCK_SUFFIX}"));
        drop(lock);
    }

    fn lock_file(&self, key: &str) -> std::io::Result<std::fs::File> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true);
        Ok(self.dir.open_with(format!("{key}{LOCK_SUFFIX}"), &options)?.into_std())
    }

    /// The segment's bytes if a complete, intact copy is cached. A copy that fails its
    /// check is deleted.
    pub fn read(&self, key: &str) -> Option<Bytes> {
        let name = format!("{key}{SEGMENT_SUFFIX}");
        let mut file = self.dir.open(&name).ok()?;
        match read_checked(&mut file) {
            Ok(bytes) => {
                // Recently used files are the last the cap evicts.
                let _ = file.into_std().set_modified(SystemTime::now());
                Some(bytes)
            }
            Err(reason) => {
                tracing::warn!(file = name, reason, "corrupt cache file deleted");
                let _ = self.dir.remove_file(&name);
                None
            }
        }
    }

    /// The size of the segment a cached file holds, if there is one (its bytes are
    /// checked when read).
    pub fn cached_size(&self, key: &str) -> Option<u64> {
        let length = self.dir.metadata(format!("{key}{SEGMENT_SUFFIX}")).ok()?.len();
        length.checked_sub(HEADER_BYTES as u64).filter(|&size| size > 0)
    }

    /// Caches a segment: written whole under a temporary name, then renamed into place,
    /// so a reader sees either nothing or all of it. Then evicts the least recently used
    /// others while the cache is over its cap. Call it holding the key's lock.
    pub fn write(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        let size = (HEADER_BYTES + bytes.len()) as u64;
        if size > self.max_bytes {
            return Err(std::io::Error::other(format!(
                "a {size}-byte segment does not fit a {}-byte cache",
                self.max_bytes
            )));
        }
        let partial = format!(
            "{key}.{}-{}{PARTIAL_SUFFIX}",
            std::process::id(),
            PARTIALS.fetch_add(1, Ordering::Relaxed)
        );
        let written = (|| {
            let mut file = self.dir.create(&partial)?;
            file.write_all(MAGIC)?;
            file.write_all(&(bytes.len() as u64).to_le_bytes())?;
            file.write_all(&Sha256::digest(bytes))?;
            file.write_all(bytes)?;
            file.sync_data()?;
            self.dir.rename(&partial, &self.dir, format!("{key}{SEGMENT_SUFFIX}"))
        })();
        if written.is_err() {
            let _ = self.dir.remove_file(&partial);
        }
        written?;
        let size = self.enforce_cap(key);
        self.measured(size);
        Ok(())
    }

    /// Deletes a cached segment (the policy evicted it).
    pub fn remove(&self, key: &str) {
        let _ = self.dir.remove_file(format!("{key}{SEGMENT_SUFFIX}"));
        self.forget_lock(key);
    }

    /// Deletes a segment's lock file if one was left and nobody holds it.
    fn forget_lock(&self, key: &str) {
        if let Ok(Some(lock)) = self.try_lock(key) {
            self.unlock(key, lock);
        }
    }

    /// Bytes of cached segments in the directory (all workers') as last measured, and
    /// whether the caller should [`Self::measure`] now (off the event loop): the
    /// measurement is older than a few seconds and none is under way.
    pub fn last_size(&self) -> (u64, bool) {
        let mut measured = self.measured.lock().unwrap_or_else(|p| p.into_inner());
        let stale = measured.at.is_none_or(|at| at.elapsed() >= SIZE_FRESH_FOR);
        let measure = stale && !measured.measuring;
        measured.measuring |= measure;
        (measured.size, measure)
    }

    /// Measures the directory: bytes of cached segments in it (all workers').
    pub fn measure(&self) -> u64 {
        let size = self.segments().iter().map(|s| s.size).sum();
        self.measured(size);
        size
    }

    fn measured(&self, size: u64) {
        let at = Some(std::time::Instant::now());
        *self.measured.lock().unwrap_or_else(|p| p.into_inner()) =
            Measured { at, size, measuring: false };
    }

    fn segments(&self) -> Vec<CachedFile> {
        let Ok(entries) = self.dir.entries() else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name.strip_suffix(SEGMENT_SUFFIX)?;
                let metadata = entry.metadata().ok()?;
                let used = metadata.modified().ok().map(|t| t.into_std());
                Some(CachedFile { name, size: metadata.len(), used })
            })
            .collect()
    }

    /// Deletes the least recently used files but `keep` while over the cap; the bytes
    /// left.
    fn enforce_cap(&self, keep: &str) -> u64 {
        let mut files = self.segments();
        let mut total: u64 = files.iter().map(|f| f.size).sum();
        if total <= self.max_bytes {
            return total;
        }
        files.sort_by_key(|f| f.used);
        let kept = format!("{keep}{SEGMENT_SUFFIX}");
        for file in files.iter().filter(|f| f.name != kept) {
            if total <= self.max_bytes {
                break;
            }
            if self.dir.remove_file(&file.name).is_ok() {
                total -= file.size;
                self.forget_lock(file.name.trim_end_matches(SEGMENT_SUFFIX));
            }
        }
        total
    }
}

struct CachedFile {
    name: String,
    size: u64,
    used: Option<SystemTime>,
}

fn read_checked(file: &mut File) -> Result<Bytes, String> {
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact(&mut header).map_err(|e| format!("no header: {e}"))?;
    if &header[..8] != MAGIC {
        return Err("not a superpeer cache file".into());
    }
    let mut length = [0u8; 8];
    length.copy_from_slice(&header[8..16]);
    let length = u64::from_le_bytes(length);
    let on_disk = file.metadata().map_err(|e| e.to_string())?.len();
    // A crafted header must not overflow the sum or size an allocation.
    if length.checked_add(HEADER_BYTES as u64) != Some(on_disk) {
        return Err(format!("holds {on_disk} bytes, its header says {length} plus the header"));
    }
    let mut data = Vec::with_capacity(length as usize);
    file.read_to_end(&mut data).map_err(|e| e.to_string())?;
    if Sha256::digest(&data)[..] != header[16..] {
        return Err("its bytes do not match their hash".into());
    }
    Ok(Bytes::from(data))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn scratch(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("superpeer-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
    fn open(dir: &Path, max_bytes: u64) -> DiskCache {
        DiskCache::open(&DiskCacheConfig { dir: dir.join("cache"), max_bytes }).unwrap()
    }
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn what_is_written_reads_back_and_survives_reopening() {
        let scratch = scratch("roundtrip");
        let cache = open(&scratch.0, 1 << 20);
        let k = key("http://o.example/vod/seg1.ts", None);
        assert_ne!(k, key("http://o.example/vod/seg1.ts", Some(ByteRange { start: 0, end: 10 })));
        let lock = cache.try_lock(&k).unwrap().unwrap();
        assert!(cache.try_lock(&k).unwrap().is_none(), "one holder at a time");
        cache.write(&k, b"segment bytes").unwrap();
        cache.unlock(&k, lock);
        assert_eq!(
            names(&scratch.0.join("cache")),
            [format!("{k}{SEGMENT_SUFFIX}")],
            "no lock file left"
        );
        drop(cache);
        let cache = open(&scratch.0, 1 << 20);
        assert_eq!(cache.read(&k).as_deref(), Some(&b"segment bytes"[..]));
        assert_eq!(cache.measure(), (HEADER_BYTES + 13) as u64);
    }

    #[test]
    fn a_damaged_or_truncated_file_is_deleted_never_served() {
        let scratch = scratch("damaged");
        let cache = open(&scratch.0, 1 << 20);
        let dir = scratch.0.join("cache");
        for (n, damage) in [
            |b: &mut Vec<u8>| b.truncate(b.len() - 1),
            |b: &mut Vec<u8>| *b.last_mut().unwrap() ^= 1,
            |b: &mut Vec<u8>| b.truncate(10),
            |b: &mut Vec<u8>| b[0] = b'X',
        ]
        .into_iter()
        .enumerate()
        {
            let k = key(&format!("http://o.example/{n}.ts"), None);
            cache.write(&k, &[7u8; 1000]).unwrap();
            let path = dir.join(format!("{k}{SEGMENT_SUFFIX}"));
            let mut bytes = std::fs::read(&path).unwrap();
            damage(&mut bytes);
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(cache.read(&k), None, "damage {n} went unnoticed");
            assert!(!path.exists(), "damage {n}: the file stays");
        }
    }

    #[test]
    fn the_cap_holds_and_the_least_recently_used_go_first() {
        let scratch = scratch("cap");
        let per_file = (HEADER_BYTES + 1000) as u64;
        let cache = open(&scratch.0, 3 * per_file);
        let keys: Vec<String> =
            (0..6).map(|i| key(&format!("http://o.example/{i}.ts"), None)).collect();
        for (i, k) in keys.iter().enumerate() {
            cache.write(k, &[i as u8; 1000]).unwrap();
            // Reading the first keeps it fresh (modification times step by whole ticks).
            let later = SystemTime::now() + std::time::Duration::from_secs(i as u64 + 1);
            let path = scratch.0.join("cache").join(format!("{k}{SEGMENT_SUFFIX}"));
            std::fs::File::options().write(true).open(path).unwrap().set_modified(later).unwrap();
            if i > 0 {
                assert!(cache.read(&keys[0]).is_some(), "the one in use was evicted at {i}");
                let first = scratch.0.join("cache").join(format!("{}{SEGMENT_SUFFIX}", keys[0]));
                let newest = SystemTime::now() + std::time::Duration::from_secs(100 + i as u64);
                std::fs::File::options()
                    .write(true)
                    .open(first)
                    .unwrap()
                    .set_modified(newest)
                    .unwrap();
            }
            assert!(cache.measure() <= 3 * per_file, "over the cap after {i}: {}", cache.measure());
        }
        let kept: Vec<bool> = keys.iter().map(|k| cache.read(k).is_some()).collect();
        assert_eq!(kept, [true, false, false, false, true, true]);
        assert!(cache.write(&key("big", None), &vec![0u8; 4000]).is_err(), "larger than the cap");
    }

    #[test]
    fn no_url_can_name_a_path_outside_the_cache() {
        let scratch = scratch("escape");
        let cache = open(&scratch.0, 1 << 20);
        for url in [
            "../../../../../../tmp/escaped",
            "/etc/passwd",
            "http://o.example/../../x",
            "..",
            "a/../../b\0c",
            "\u{202e}evil",
        ] {
            let k = key(url, None);
            cache.write(&k, b"x").unwrap();
            assert_eq!(cache.read(&k).as_deref(), Some(&b"x"[..]));
        }
        assert_eq!(names(&scratch.0), ["cache"], "nothing beside the cache directory");
        for name in names(&scratch.0.join("cache")) {
            let stem = name.split('.').next().unwrap();
            assert!(stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        }
        // The directory is a capability: even a hand-made name cannot climb out of it.
        assert!(cache.dir.create("../outside").is_err());
        assert!(cache.dir.open("/etc/passwd").is_err());
    }

    #[test]
    fn a_writer_that_died_leaves_nothing_that_is_served() {
        let scratch = scratch("died");
        let cache = open(&scratch.0, 1 << 20);
        let k = key("http://o.example/half.ts", None);
        // What a writer killed mid-write leaves: a partial file, and no lock held.
        let partial = scratch.0.join("cache").join(format!("{k}.999-0{PARTIAL_SUFFIX}"));
        std::fs::write(&partial, b"SPSEG01\nhalf").unwrap();
        assert_eq!(cache.read(&k), None);
        let busy = key("http://o.example/busy.ts", None);
        let busy_partial = scratch.0.join("cache").join(format!("{busy}.1-0{PARTIAL_SUFFIX}"));
        std::fs::write(&busy_partial, b"SPSEG01\n").unwrap();
        let _writing = cache.try_lock(&busy).unwrap().unwrap();
        drop(cache);
        let _reopened = open(&scratch.0, 1 << 20);
        assert!(!partial.exists(), "an abandoned partial file is cleaned up");
        assert!(busy_partial.exists(), "a live writer's partial file is left alone");
    }
}
