//! The lake: an object store (local directory or S3 API) plus a root prefix.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use url::Url;

/// Errors of the lake's IO edge.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The URL is not `file:///...` or `s3://bucket/prefix`.
    #[error("lake url {0:?}: {1}")]
    Url(String, String),
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// A local filesystem operation failed.
    #[error("local filesystem: {0}")]
    Io(#[from] std::io::Error),
    /// Parquet encoding or decoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Arrow failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A conditional write found the object changed by someone else: another sink instance
    /// claimed the partition (this one is a zombie and must stop writing it).
    #[error("{0}: changed by another writer (fenced)")]
    Fenced(String),
    /// A bookkeeping object is not what this version writes.
    #[error("{0}: {1}")]
    Corrupt(String, String),
}

/// Result of lake operations.
pub type Result<T, E = LakeError> = std::result::Result<T, E>;

/// An opened lake.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    local_root: Option<PathBuf>,
}

/// Where and how to reach an S3 API.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Endpoint URL (`http://127.0.0.1:9000`); AWS when unset.
    pub endpoint: Option<String>,
    /// Access key id.
    pub access_key: Option<String>,
    /// Secret access key.
    pub secret_key: Option<String>,
    /// Region (`us-east-1` when unset).
    pub region: Option<String>,
}

impl S3Settings {
    /// From `FLEET_S3_ENDPOINT` (or `AWS_ENDPOINT`), `FLEET_S3_ACCESS_KEY` (or
    /// `AWS_ACCESS_KEY_ID`), `FLEET_S3_SECRET_KEY` (or `AWS_SECRET_ACCESS_KEY`), `AWS_REGION`.
    pub fn from_env() -> Self {
        let env = |a: &str, b: &str| std::env::var(a).or_else(|_| std::env::var(b)).ok();
        Self {
            endpoint: env("FLEET_S3_ENDPOINT", "AWS_ENDPOINT"),
            access_key: env("FLEET_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
            secret_key: env("FLEET_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
            region: env("AWS_REGION", "AWS_DEFAULT_REGION"),
        }
    }

    fn builder(&self, bucket: &str) -> AmazonS3Builder {
        let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
        if let Some(endpoint) = &self.endpoint {
            b = b
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if let Some(k) = &self.access_key {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &self.secret_key {
            b = b.with_secret_access_key(s);
        }
        b.with_region(self.region.clone().unwrap_or_else(|| "us-east-1".into()))
    }
}

impl Lake {
    /// Opens a directory (`/abs/dir`, `rel/dir` or `file:///abs/dir`; created if missing) or `s3://bucket/prefix` (endpoint and
    /// credentials from the environment, see [`S3Settings::from_env`]).
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, &S3Settings::from_env())
    }

    /// Like [`Lake::open`] with explicit S3 settings.
    pub fn open_with(url: &str, s3: &S3Settings) -> Result<Self> {
        let bad = |why: &str| LakeError::Url(url.to_owned(), why.to_owned());
        if !url.contains("://") {
            // A bare (possibly relative) directory.
            let dir = std::path::absolute(url)?;
            std::fs::create_dir_all(&dir)?;
            let file_url =
                Url::from_directory_path(&dir).map_err(|()| bad("not a directory path"))?;
            return Self::open_with(file_url.as_str(), s3);
        }
        let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| bad("not an absolute file path"))?;
                std::fs::create_dir_all(&dir)?;
                let store = LocalFileSystem::new_with_prefix(&dir)?.with_automatic_cleanup(true);
                Ok(Self {
                    store: Arc::new(store),
                    root: Path::default(),
                    url: url.to_owned(),
                    local_root: Some(dir),
                })
            }
            "s3" => {
                let bucket = parsed.host_str().ok_or_else(|| bad("no bucket"))?;
                let store = s3.builder(bucket).build()?;
                Ok(Self {
                    store: Arc::new(store),
                    root: Path::parse(parsed.path().trim_matches('/'))
                        .map_err(|e| bad(&e.to_string()))?,
                    url: url.to_owned(),
                    local_root: None,
                })
            }
            other => Err(bad(&format!("unsupported scheme {other:?} (file or s3)"))),
        }
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object store and the root prefix (for query engines).
    pub fn store(&self) -> (&Arc<dyn ObjectStore>, &Path) {
        (&self.store, &self.root)
    }

    /// The local directory of a `file://` lake.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// Absolute store path of a lake-relative path.
    pub fn path(&self, rel: &str) -> Path {
        let mut p = self.root.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// Lake-relative form of a store path.
    pub fn rel(&self, path: &Path) -> String {
        let full = path.as_ref();
        let root = self.root.as_ref();
        if root.is_empty() {
            full.to_owned()
        } else {
            full.strip_prefix(root)
                .map(|s| s.trim_start_matches('/').to_owned())
                .unwrap_or_else(|| full.to_owned())
        }
    }

    /// Writes an object atomically (single PUT).
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        self.store
            .put(&self.path(rel), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// Reads an object with its version (ETag); `None` when it does not exist.
    pub async fn get_versioned(&self, rel: &str) -> Result<Option<(Bytes, UpdateVersion)>> {
        match self.store.get(&self.path(rel)).await {
            Ok(r) => {
                let version = UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                Ok(Some((r.bytes().await?, version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes an object only if it is still at `expected` (`None`: only if it does not
    /// exist): an S3 conditional PUT (`If-Match` / `If-None-Match`). Returns the new version;
    /// [`LakeError::Fenced`] when someone else wrote it meanwhile. A local directory has no
    /// conditional overwrite: the write is unconditional there (one host, one sink: not
    /// fenced).
    pub async fn put_if(
        &self,
        rel: &str,
        bytes: Bytes,
        expected: Option<&UpdateVersion>,
    ) -> Result<UpdateVersion> {
        let path = self.path(rel);
        if self.local_root.is_some() {
            let r = self.store.put(&path, PutPayload::from(bytes)).await?;
            return Ok(UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            });
        }
        let mode = match expected {
            Some(v) => PutMode::Update(v.clone()),
            None => PutMode::Create,
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(bytes), PutOptions::from(mode))
            .await
        {
            Ok(r) => Ok(UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            }),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Err(LakeError::Fenced(rel.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads an object; `None` when it does not exist.
    pub async fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        match self.store.get(&self.path(rel)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether an object exists.
    pub async fn exists(&self, rel: &str) -> Result<bool> {
        match self.store.head(&self.path(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an object; a missing one is not an error.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves an object (a rename on a local disk, copy + delete on S3).
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.store.rename(&self.path(from), &self.path(to)).await?;
        Ok(())
    }

    /// Every object under a lake-relative prefix, recursively.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let p = self.path(prefix);
        Ok(self.store.list(Some(&p)).try_collect().await?)
    }

    /// Removes leftovers of interrupted local writes under `prefix` whose file name starts
    /// with `name_prefix`: the object store writes a local file as `<name>#<n>` and renames
    /// it into place, so a kill mid-write leaves the `#` file behind (S3 PUTs leave nothing).
    /// Returns how many were removed.
    pub fn remove_local_partials(&self, prefix: &str, name_prefix: &str) -> Result<usize> {
        let Some(root) = &self.local_root else {
            return Ok(0);
        };
        let mut removed = 0;
        let mut stack = vec![root.join(prefix)];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(name_prefix)
                    && name
                        .rsplit_once('#')
                        .is_some_and(|(_, n)| n.chars().all(|c| c.is_ascii_digit()))
                {
                    std::fs::remove_file(&path)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
