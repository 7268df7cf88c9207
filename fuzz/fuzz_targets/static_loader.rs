//! The static discovery file's loader, as the control core runs it: a
//! real file, loaded as start-up does on its first text, then the file rewritten
//! in place with the second text and polled twice.
//!
//! Input: the two texts, split at the first NUL byte (UTF-8 each).
//!
//! Checks: never panics; `parse` (one `[[service]]` table at a time)
//! agrees with the whole file parsed as one document
//! (`parse_whole_document`), both ways; start-up fails exactly when the
//! first text does not parse; after the rewrite, a text that does not
//! parse changes nothing, one with services is published at the first
//! poll exactly as parsed, and one with no services (`empty = true`) only
//! at the second poll — a set with services is never emptied at once.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use ringmesh_discovery::{static_file, Service, Snapshot, StaticLoader};

/// The discovery file, reused by every input of this process. Nothing
/// removes it (a fuzzed process ends by exit or abort): scripts/fuzz.sh
/// points TMPDIR at a directory it removes.
fn file() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringmesh-fuzz-loader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("static.toml")
}

/// Those of `of`'s services the snapshot holds, as text, sorted; once
/// each.
fn view(snap: &Snapshot, of: &[Service]) -> Vec<String> {
    let mut v: Vec<String> = of
        .iter()
        .filter_map(|s| snap.service(&s.name))
        .map(|s| format!("{s:?}"))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn expected(of: &[Service]) -> Vec<String> {
    let mut v: Vec<String> = of.iter().map(|s| format!("{s:?}")).collect();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let (first, second) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let (Ok(first), Ok(second)) = (std::str::from_utf8(first), std::str::from_utf8(second)) else {
        return;
    };
    let parsed = [first, second].map(|text| {
        let chunked = static_file::parse(text).ok();
        let whole = static_file::parse_whole_document(text);
        assert_eq!(
            chunked, whole,
            "one table at a time disagrees with the whole document: {text:?}"
        );
        chunked
    });
    let path = file();
    std::fs::write(&path, first).expect("write");
    let started = StaticLoader::start(path.clone());
    assert_eq!(
        started.is_ok(),
        parsed[0].is_some(),
        "start-up disagrees with parse"
    );
    let (Ok(mut d), Some(before)) = (started, &parsed[0]) else {
        return;
    };
    assert_eq!(view(&d.snapshot(), before), expected(before));
    // Renamed into place: a new inode, so the change is seen even when
    // size and modification time (a coarse clock) are unchanged.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, second).expect("rewrite");
    std::fs::rename(&tmp, &path).expect("rename");
    let version = d.snapshot().version();
    let poll1 = d.poll();
    match &parsed[1] {
        None => {
            assert!(!poll1, "a text that does not parse was published");
            assert_eq!(d.snapshot().version(), version);
        }
        Some(after) if after.is_empty() && !before.is_empty() => {
            assert!(!poll1, "every service dropped at the first sight");
            assert_eq!(view(&d.snapshot(), before), expected(before));
            d.poll();
            assert_eq!(view(&d.snapshot(), before), Vec::<String>::new());
        }
        Some(after) => {
            let both: Vec<Service> = before.iter().chain(after).cloned().collect();
            assert_eq!(view(&d.snapshot(), &both), expected(after));
            assert_eq!(poll1, d.snapshot().version() != version);
        }
    }
});
