//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) and the golden files through
//! the fuzz targets' logic on the stable toolchain: every input that ever found a bug stays a
//! regression test, and no input may make the edge forward what its own validator rejects.

use std::path::Path;

fn replay(dir: &str, f: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    let mut stack = vec![root.join(dir)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                f(&bytes);
                n += 1;
            }
        }
    }
    n
}

#[test]
fn sip_corpora_replay_through_frame_validate_and_roundtrip() {
    let mut n = 0;
    for dir in [
        "fuzz/corpus/sip_frame",
        "fuzz/corpus/sip_validate",
        "fuzz/corpus/sip_roundtrip",
        "tests/golden",
    ] {
        n += replay(dir, sipedge::fuzz_logic::frame);
        n += replay(dir, sipedge::fuzz_logic::validate);
        n += replay(dir, sipedge::fuzz_logic::roundtrip);
    }
    assert!(n > 0, "no corpus found");
}

#[test]
fn session_corpus_replays_through_the_outsider_world() {
    let n = replay(
        "fuzz/corpus/sip_session",
        sipedge::fuzz_logic::outsider::run,
    );
    assert!(n > 0, "no corpus found");
}

#[test]
fn pair_corpus_replays_through_the_simulated_pair() {
    let n = replay("fuzz/corpus/sip_pair", sipedge::fuzz_logic::pair::run);
    assert!(n > 0, "no corpus found");
}

#[test]
fn topology_corpus_and_examples_replay() {
    let n = replay("fuzz/corpus/topology", sipedge::fuzz_logic::topology)
        + replay("topology/examples", sipedge::fuzz_logic::topology);
    assert!(n >= 2, "no topology corpus found");
}

#[test]
fn mras_and_keyring_corpora_replay() {
    let n = replay("fuzz/corpus/mras", sipedge::fuzz_logic::mras)
        + replay("fuzz/corpus/keyring", sipedge::fuzz_logic::keyring);
    assert!(n >= 2, "no corpus found");
}

#[test]
fn pool_messages_corpus_replays() {
    let n = replay(
        "fuzz/corpus/pool_messages",
        sipedge::fuzz_logic::pool_messages,
    );
    assert!(n >= 4, "no corpus found");
}

#[test]
fn stun_and_channel_data_corpora_replay() {
    let n = replay("fuzz/corpus/stun", sipedge::fuzz_logic::stun)
        + replay(
            "fuzz/corpus/channel_data",
            sipedge::fuzz_logic::channel_data,
        );
    assert!(n >= 2, "no corpus found");
}

#[test]
fn turn_server_corpus_replays() {
    assert!(replay("fuzz/corpus/turn_server", sipedge::fuzz_logic::turn_server) >= 1);
    assert!(
        replay(
            "fuzz/corpus/turn_session",
            sipedge::fuzz_logic::turn_session::run
        ) >= 1
    );
}
