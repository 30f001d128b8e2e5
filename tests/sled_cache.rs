//! sled's page cache keeps to its `cache_capacity` (the vendored sled, vendor/sled/FOLDERTRACK.md).
//!
//! Why a test: the agent's memory after a burst of mail depends on it. The published sled
//! weighed page accesses against the capacity only in batches (up to 16,128 accesses waited),
//! so a store it had written or read stayed in memory almost whole; an agent on 1,000 mailboxes
//! was up to 22 % above its idle RSS after 10,000 deliveries (the same agent on PostgreSQL: +0.5 %).
//!
//! How: this test binary counts the bytes allocated and not yet freed (`testkit::alloc`, for
//! the whole process), writes about 20 MB into a store with a 1 MiB cache, reads every key
//! back, and compares the bytes still allocated before and after. Counting bytes, not RSS,
//! keeps the allocator's own retention and the machine out of the figure. One test in this
//! file, so no other test allocates meanwhile (sled's flusher thread does, little).

use testkit::alloc::process_live;

/// Counted for the whole process: sled allocates on threads of its own too.
#[global_allocator]
static ALLOC: testkit::alloc::Counting = testkit::alloc::Counting;

const CACHE: u64 = 1 << 20;

fn open(dir: &std::path::Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE)
        .mode(sled::Mode::LowSpace)
        .open()
        .expect("sled opens its store")
}

const TREES: [&str; 3] = ["activities", "by_msgid", "fields"];

/// 60,000 keys of 300-byte values over three trees, as the agent's index and activity trees
/// hold them: about 20 MB of data, twenty times the cache.
fn fill(trees: &[sled::Tree]) {
    for tree in trees {
        for i in 0..20_000u32 {
            let key = format!("<message-{i:06}@example.com>");
            tree.insert(key.as_bytes(), vec![b'x'; 300]).unwrap();
        }
    }
}

#[test]
fn writing_and_reading_a_store_keeps_only_about_the_cache_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let trees: Vec<sled::Tree> = TREES.iter().map(|t| db.open_tree(t).unwrap()).collect();
    let before = process_live();
    fill(&trees);
    db.flush().unwrap();
    let mut read = 0usize;
    for tree in &trees {
        for kv in tree.iter() {
            read += kv.unwrap().1.len();
        }
    }
    let held = process_live() - before;
    assert_eq!(read, 60_000 * 300, "every value read back");
    eprintln!("held after writing and reading: {held} bytes");
    // Published sled: nearly every page written and read stays. Vendored: about the cache
    // (counted by on-disk size rounded up to a power of two) plus each page's bookkeeping.
    // 8 MiB is eight times the capacity.
    assert!(
        held < 8 << 20,
        "writing and reading the store left {held} bytes allocated with a {CACHE}-byte cache"
    );
}
