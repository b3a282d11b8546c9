//! The store on a local directory (the same code runs on moto's S3 in
//! `tests/tests/checkpoints.rs`).

use berth_wire::checkpoint::CheckpointReason;

use super::*;

fn manifest(conversation: &str, id: &str) -> Manifest {
    Manifest {
        id: id.into(),
        parent: None,
        conversation_id: conversation.into(),
        workspace_id: "ws-1".into(),
        template: "default".into(),
        reason: CheckpointReason::Api,
        size: 0,
        sha256: String::new(),
        entries: 1,
        bytes: 1,
        skipped: 0,
        created_at_ms: 1,
        duration_ms: 1,
    }
}

struct TempStore(std::path::PathBuf, Store);

impl TempStore {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "berth-ckpt-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let store = Store::open(dir.to_str().unwrap()).unwrap();
        Self(dir, store)
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chunks(data: &[u8]) -> impl Stream<Item = std::io::Result<Bytes>> + use<> {
    let parts: Vec<std::io::Result<Bytes>> = data
        .chunks(100_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(parts)
}

async fn read_all(store: &Store, m: &Manifest) -> Vec<u8> {
    let mut s = store.download(m).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

#[tokio::test]
async fn upload_list_download_prune_and_delete() {
    let t = TempStore::new();
    let store = &t.1;
    let conv = "conv/with odd chars ☃";
    assert!(store.latest(conv).await.unwrap().is_none());
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut ids = Vec::new();
    for n in 0..4u64 {
        let id = new_id(1_700_000_000_000 + n, 0xabc);
        let m = store
            .upload(
                manifest(conv, &id),
                chunks(&data),
                std::time::Instant::now(),
            )
            .await
            .unwrap();
        assert_eq!(m.size, data.len() as u64);
        assert_eq!(m.sha256, berth_wire::sha256_hex(&data));
        ids.push(id);
    }
    let latest = store.latest(conv).await.unwrap().unwrap();
    assert_eq!(latest.id, ids[3]);
    assert_eq!(read_all(store, &latest).await, data);
    assert_eq!(store.prune(conv, 2).await.unwrap(), 2);
    let left: Vec<String> = store
        .list(conv)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, ids[2..].to_vec());
    // Another conversation is untouched by deleting this one.
    let other = store
        .upload(
            manifest("other", &new_id(1, 1)),
            chunks(b"x"),
            std::time::Instant::now(),
        )
        .await
        .unwrap();
    assert_eq!(store.delete_conversation(conv).await.unwrap(), 2);
    assert!(store.latest(conv).await.unwrap().is_none());
    let left = t.0.join(conversation_key(conv));
    let names: Vec<_> = std::fs::read_dir(&left)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(!left.exists(), "its directory is gone too: {names:?}");
    assert_eq!(store.latest("other").await.unwrap().unwrap().id, other.id);
}

#[tokio::test]
async fn a_failed_source_leaves_nothing_listed() {
    let t = TempStore::new();
    let store = &t.1;
    let failing = futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"part")),
        Err(std::io::Error::other("the agent went away")),
    ]);
    let err = store
        .upload(
            manifest("c", &new_id(5, 5)),
            failing,
            std::time::Instant::now(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Source(_)), "{err}");
    assert!(store.latest("c").await.unwrap().is_none());
}

#[tokio::test]
async fn a_missing_or_resized_archive_is_refused_before_reading() {
    let t = TempStore::new();
    let store = &t.1;
    let m = store
        .upload(
            manifest("c", &new_id(7, 7)),
            chunks(b"hello"),
            std::time::Instant::now(),
        )
        .await
        .unwrap();
    let mut wrong = m.clone();
    wrong.size = 4;
    assert!(matches!(
        store.download(&wrong).await,
        Err(Error::BadManifest { .. })
    ));
    let mut gone = m.clone();
    gone.id = new_id(8, 8);
    assert!(matches!(
        store.download(&gone).await,
        Err(Error::NotFound(_))
    ));
}

#[test]
fn a_listing_takes_a_new_id_in_order() {
    let mut l = Listing {
        complete: vec![new_id(1, 0), new_id(3, 0)],
        interrupted: Vec::new(),
    };
    l.add(&new_id(2, 0));
    l.add(&new_id(3, 0));
    assert_eq!(l.complete, vec![new_id(1, 0), new_id(2, 0), new_id(3, 0)]);
}

#[test]
fn ids_sort_by_time_and_urls_are_checked() {
    assert!(new_id(9, 1) < new_id(10, 0));
    assert!(valid_id(&new_id(1_700_000_000_000, u32::MAX)));
    assert!(!valid_id("ck-123-abc"));
    assert!(!valid_id("../../etc"));
    assert!(Store::open("relative/dir").is_err());
    assert!(Store::open("s3://").is_err());
}
