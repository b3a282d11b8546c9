//! Where checkpoints live: one object store (S3 in a fleet, a local directory in
//! `scheduler dev`), with the key layout, manifests, streaming upload and download,
//! and retention.
//!
//! Background: hostd writes and reads archives (it carries them between the agent
//! and the store: the workspace never holds the store's credentials, nor can it
//! reach the store); the scheduler lists and deletes (the latest checkpoint of a
//! conversation at acquire, a conversation's checkpoints when the user deletes it).
//! Both use this crate, over the maintained `object_store` crate, which speaks S3
//! (multipart uploads, its own credential chain) and the local file system through
//! one trait.
//!
//! Layout, under the configured prefix: `<sha256(conversation id)>/<id>.tar.zst`
//! and `<id>.json` (the [`Manifest`]). Conversation ids are the backend's and may
//! hold any character; their hash makes a fixed, safe key. Checkpoint ids sort by
//! time, so the latest is the greatest. A manifest is written only after its
//! archive is complete, so a listing never offers half an upload.
#![forbid(unsafe_code)]

use std::sync::Arc;

use berth_wire::checkpoint::Manifest;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt, stream::BoxStream};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart, path::Path};
use sha2::{Digest, Sha256};

/// Parts in flight during an upload (each up to [`PART_BYTES`]): what an upload
/// holds in memory, at most.
const PARTS_IN_FLIGHT: usize = 4;
/// Bytes per multipart part (S3's minimum is 5 MiB).
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Bytes per chunk when an archive is read from a local directory.
const READ_CHUNK: usize = 256 * 1024;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store URL cannot be used.
    #[error("checkpoint store {url:?}: {reason}")]
    Config { url: String, reason: String },
    /// The checkpoint (its archive or manifest) is not in the store.
    #[error("checkpoint {0} is not in the store")]
    NotFound(String),
    /// The store refused or failed a request.
    #[error("checkpoint store: {0}")]
    Store(String),
    /// The archive's source failed mid-way (the upload was aborted).
    #[error("the archive stream failed: {0}")]
    Source(String),
    /// A manifest that is not JSON of the right shape.
    #[error("manifest {key}: {reason}")]
    BadManifest { key: String, reason: String },
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => Error::NotFound(path),
            e => Error::Store(e.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The checkpoint store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The URL it was opened from, for logs and status pages (no credentials).
    url: String,
    /// The directory of a local store (whose emptied conversation directories are
    /// removed too: the file system keeps them, S3 has none).
    local_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

/// A conversation's checkpoint ids, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Checkpoints with a manifest.
    pub complete: Vec<String>,
    /// Archives without one (interrupted uploads).
    pub interrupted: Vec<String>,
}

impl Listing {
    /// Adds a checkpoint just stored, keeping the order.
    pub fn add(&mut self, id: &str) {
        if let Err(at) = self.complete.binary_search_by(|c| c.as_str().cmp(id)) {
            self.complete.insert(at, id.to_owned());
        }
    }
}

/// A checkpoint id: `ck-<unix ms, 13 digits>-<8 hex>`.
pub fn new_id(now_ms: u64, random: u32) -> String {
    format!("ck-{now_ms:013}-{random:08x}")
}

/// Whether `id` has the shape [`new_id`] gives.
pub fn valid_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("ck-") else {
        return false;
    };
    let Some((ms, rand)) = rest.split_once('-') else {
        return false;
    };
    ms.len() == 13
        && ms.bytes().all(|b| b.is_ascii_digit())
        && rand.len() == 8
        && rand.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The key part of a conversation: the hex SHA-256 of its id.
pub fn conversation_key(conversation_id: &str) -> String {
    berth_wire::sha256_hex(conversation_id.as_bytes())
}

impl Store {
    /// Opens `url`: `s3://bucket[/prefix]` (credentials, region and endpoint from
    /// the `AWS_*` environment, e.g. `AWS_REGION`, `AWS_ENDPOINT`,
    /// `AWS_ALLOW_HTTP`, else the instance's role), or `file:///dir` / an absolute
    /// directory path (made if missing).
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, &[])
    }

    /// [`Store::open`], with S3 settings that win over the environment, as
    /// `object_store` names them (`aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`, …): for
    /// tests, which must never fall back to the instance metadata service.
    pub fn open_with(url: &str, s3: &[(&str, &str)]) -> Result<Self> {
        let config = |reason: String| Error::Config {
            url: url.to_owned(),
            reason,
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(config("names no bucket (s3://BUCKET/PREFIX)".into()));
            }
            let mut builder =
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (key, value) in s3 {
                let key: object_store::aws::AmazonS3ConfigKey = key
                    .parse()
                    .map_err(|e: object_store::Error| config(e.to_string()))?;
                builder = builder.with_config(key, *value);
            }
            let s3 = builder.build().map_err(|e| config(e.to_string()))?;
            return Ok(Self {
                inner: Arc::new(s3),
                prefix: Path::from(prefix.trim_matches('/')),
                url: url.to_owned(),
                local_dir: None,
            });
        }
        let dir = url.strip_prefix("file://").unwrap_or(url);
        if !dir.starts_with('/') {
            return Err(config(
                "is neither s3://BUCKET/PREFIX nor an absolute directory (file:///DIR)".into(),
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| config(format!("cannot make the directory: {e}")))?;
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| config(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(local),
            prefix: Path::default(),
            url: format!("file://{dir}"),
            local_dir: Some(dir.into()),
        })
    }

    /// The URL it was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn conversation_dir(&self, conversation_id: &str) -> Path {
        self.prefix.clone().join(conversation_key(conversation_id))
    }

    fn archive_key(&self, conversation_id: &str, id: &str) -> Path {
        self.conversation_dir(conversation_id)
            .join(format!("{id}.tar.zst"))
    }

    fn manifest_key(&self, conversation_id: &str, id: &str) -> Path {
        self.conversation_dir(conversation_id)
            .join(format!("{id}.json"))
    }

    /// A conversation's checkpoint ids, from one listing of its prefix.
    pub async fn listing(&self, conversation_id: &str) -> Result<Listing> {
        let dir = self.conversation_dir(conversation_id);
        let mut complete = Vec::new();
        let mut interrupted = Vec::new();
        let mut listing = self.inner.list(Some(&dir));
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if let Some(id) = name.strip_suffix(".json").filter(|id| valid_id(id)) {
                complete.push(id.to_owned());
            } else if let Some(id) = name.strip_suffix(".tar.zst").filter(|id| valid_id(id)) {
                interrupted.push(id.to_owned());
            }
        }
        complete.sort();
        interrupted.sort();
        interrupted.retain(|a| complete.binary_search(a).is_err());
        Ok(Listing {
            complete,
            interrupted,
        })
    }

    /// One manifest.
    pub async fn manifest(&self, conversation_id: &str, id: &str) -> Result<Manifest> {
        let key = self.manifest_key(conversation_id, id);
        let bytes = self.inner.get(&key).await?.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::BadManifest {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// The conversation's latest complete checkpoint, if any.
    pub async fn latest(&self, conversation_id: &str) -> Result<Option<Manifest>> {
        let ids = self.listing(conversation_id).await?.complete;
        match ids.last() {
            Some(id) => self.manifest(conversation_id, id).await.map(Some),
            None => Ok(None),
        }
    }

    /// The conversation's checkpoints, oldest first.
    pub async fn list(&self, conversation_id: &str) -> Result<Vec<Manifest>> {
        let ids = self.listing(conversation_id).await?.complete;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.manifest(conversation_id, &id).await?);
        }
        Ok(out)
    }

    /// Streams `archive` into the store as checkpoint `manifest.id` of
    /// `manifest.conversation_id` (multipart: at most [`PARTS_IN_FLIGHT`] parts
    /// in memory), then writes the manifest with the archive's size and SHA-256
    /// filled in, and its `duration_ms` counted from `started`. A source that fails
    /// aborts the upload; nothing is listed.
    pub async fn upload<S>(
        &self,
        mut manifest: Manifest,
        archive: S,
        started: std::time::Instant,
    ) -> Result<Manifest>
    where
        S: Stream<Item = std::io::Result<Bytes>>,
    {
        let key = self.archive_key(&manifest.conversation_id, &manifest.id);
        let upload = self.inner.put_multipart(&key).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut archive = std::pin::pin!(archive);
        while let Some(chunk) = archive.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(Error::Source(e.to_string()));
                }
            };
            hasher.update(&chunk);
            size += chunk.len() as u64;
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(e.into());
            }
            writer.put(chunk);
        }
        writer.finish().await?;
        manifest.size = size;
        manifest.sha256 = hex::encode(hasher.finalize());
        manifest.duration_ms = started.elapsed().as_millis() as u64;
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Store(e.to_string()))?;
        self.inner
            .put(
                &self.manifest_key(&manifest.conversation_id, &manifest.id),
                PutPayload::from(json),
            )
            .await?;
        Ok(manifest)
    }

    /// The archive of `manifest` as a stream of chunks; a store that holds a
    /// different size than the manifest says is [`Error::BadManifest`] before a
    /// byte is read.
    pub async fn download(
        &self,
        manifest: &Manifest,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>> {
        let key = self.archive_key(&manifest.conversation_id, &manifest.id);
        let got = match self.inner.get(&key).await {
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NotFound(manifest.id.clone()));
            }
            r => r?,
        };
        if got.meta.size != manifest.size {
            return Err(Error::BadManifest {
                key: key.to_string(),
                reason: format!(
                    "the store holds {} bytes, the manifest says {}",
                    got.meta.size, manifest.size
                ),
            });
        }
        Ok(match got.payload {
            object_store::GetResultPayload::File(file, _) => {
                let file = tokio::fs::File::from_std(file);
                // `object_store` reads local files 8 KiB at a time, which costs a
                // restore its throughput.
                tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK).boxed()
            }
            _ => got.into_stream().map_err(std::io::Error::other).boxed(),
        })
    }

    /// Deletes all but the newest `keep` checkpoints of the conversation (manifest
    /// first, so a listing never offers an archive being deleted), and archives
    /// older than the oldest kept one that never got a manifest. Returns how many
    /// checkpoints went.
    pub async fn prune(&self, conversation_id: &str, keep: usize) -> Result<usize> {
        let listing = self.listing(conversation_id).await?;
        self.prune_listed(conversation_id, &listing, keep).await
    }

    /// [`Store::prune`] on a listing made already (hostd lists once per checkpoint,
    /// before it, and adds the new id).
    pub async fn prune_listed(
        &self,
        conversation_id: &str,
        listing: &Listing,
        keep: usize,
    ) -> Result<usize> {
        let ids = &listing.complete;
        let cut = ids.len().saturating_sub(keep);
        for id in &ids[..cut] {
            self.delete_one(conversation_id, id).await?;
        }
        if let Some(oldest_kept) = ids.get(cut) {
            for id in listing
                .interrupted
                .iter()
                .filter(|s| s.as_str() < oldest_kept.as_str())
            {
                self.delete_key(&self.archive_key(conversation_id, id))
                    .await?;
            }
        }
        Ok(cut)
    }

    /// Deletes every checkpoint of the conversation (the user deleted it).
    pub async fn delete_conversation(&self, conversation_id: &str) -> Result<usize> {
        let Listing {
            complete: ids,
            interrupted,
        } = self.listing(conversation_id).await?;
        for id in &ids {
            self.delete_one(conversation_id, id).await?;
        }
        for id in &interrupted {
            self.delete_key(&self.archive_key(conversation_id, id))
                .await?;
        }
        if let Some(dir) = &self.local_dir {
            // Not even the name of a deleted conversation's directory stays.
            let _ = std::fs::remove_dir(dir.join(conversation_key(conversation_id)));
        }
        Ok(ids.len())
    }

    async fn delete_one(&self, conversation_id: &str, id: &str) -> Result<()> {
        self.delete_key(&self.manifest_key(conversation_id, id))
            .await?;
        self.delete_key(&self.archive_key(conversation_id, id))
            .await
    }

    async fn delete_key(&self, key: &Path) -> Result<()> {
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
