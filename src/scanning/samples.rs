//! Scanned samples kept on disk, content-addressed (`samples/ab/abcdef...`), within a total
//! size cap: past it the oldest (by last write) are evicted first.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct SampleFiles {
    dir: PathBuf,
    max_bytes: u64,
    used: Mutex<u64>,
}

fn walk(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(meta) = file.metadata()
                && meta.is_file()
            {
                let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                out.push((file.path(), meta.len(), modified));
            }
        }
    }
    out
}

impl SampleFiles {
    pub fn open(dir: PathBuf, max_bytes: u64) -> Self {
        let used = walk(&dir).iter().map(|(_, len, _)| len).sum();
        SampleFiles {
            dir,
            max_bytes,
            used: Mutex::new(used),
        }
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(&sha256[..2]).join(sha256)
    }

    /// Keeps `data` under its SHA-256 (blocking; writes through a temporary file).
    pub fn keep(&self, sha256: &str, data: &[u8]) -> std::io::Result<()> {
        if sha256.len() < 3 || data.len() as u64 > self.max_bytes {
            return Ok(());
        }
        let path = self.path(sha256);
        if path.exists() {
            // Seen again: it counts as new for eviction.
            let _ = std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(());
        }
        std::fs::create_dir_all(path.parent().expect("sharded path"))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, &path)?;
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *used += data.len() as u64;
        if *used > self.max_bytes {
            let mut files = walk(&self.dir);
            files.sort_by_key(|(_, _, modified)| *modified);
            for (file, len, _) in files {
                if *used <= self.max_bytes {
                    break;
                }
                if file != path && std::fs::remove_file(&file).is_ok() {
                    *used = used.saturating_sub(len);
                }
            }
        }
        Ok(())
    }

    /// Every kept sample: (sha256, path).
    pub fn list(&self) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = walk(&self.dir)
            .into_iter()
            .filter_map(|(path, _, _)| {
                let name = path.file_name()?.to_str()?.to_owned();
                (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then_some((name, path))
            })
            .collect();
        out.sort();
        out
    }

    pub fn used_bytes(&self) -> u64 {
        *self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_samples_are_evicted_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let files = SampleFiles::open(dir.path().to_owned(), 25);
        let sha = |c: char| c.to_string().repeat(64);
        files.keep(&sha('a'), b"0123456789").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        files.keep(&sha('b'), b"0123456789").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        files.keep(&sha('c'), b"0123456789").unwrap();
        let kept: Vec<String> = files.list().into_iter().map(|(s, _)| s).collect();
        assert_eq!(kept, vec![sha('b'), sha('c')]);
        assert_eq!(files.used_bytes(), 20);
        files.keep(&sha('d'), &[0u8; 26]).unwrap();
        assert_eq!(
            files.list().len(),
            2,
            "a sample over the whole cap is not kept"
        );
    }
}
