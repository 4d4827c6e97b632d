//! The outsider property test (`sipedge::fuzz_logic::outsider`): seeded sequences of what
//! Internet clients can send, with every token, Via, Call-ID and tag they learned from the
//! edge on their own connection or another, against real sessions; after every step nothing
//! reaches the inside for an unserved Request-URI without a dialog proven on that connection,
//! no response reaches it that the Director did not ask that connection for, and the call
//! table stays within its bounds. The fuzz target `sip_session` runs the same world.

use sipedge::fuzz_logic::outsider::{Seeded, World};

#[test]
fn an_outsider_never_gets_past_the_trust_boundary() {
    let (mut steps, mut reached, mut proven, mut responses) = (0, 0, 0, 0);
    let mut refused = std::collections::BTreeMap::new();
    for seed in 0..96 {
        let mut world = World::new();
        world.run(&mut Seeded::new(seed, 500), 500);
        steps += world.steps;
        reached += world.reached_director;
        proven += world.proven_elsewhere;
        responses += world.responses_in;
        for (reason, n) in world.rejects() {
            *refused.entry(*reason).or_insert(0) += n;
        }
    }
    eprintln!(
        "{steps} steps: {reached} messages reached the Director ({proven} out of domain in \
         proven dialogs, {responses} responses); refused: {refused:?}"
    );
    // The generator reaches every side of the oracle: proven dialogs leading anywhere,
    // genuine responses, and each kind of refusal.
    assert_eq!(steps, 96 * 500);
    assert!(
        proven > 0,
        "no proven dialog reached an out-of-domain target"
    );
    assert!(responses > 0, "no genuine response went in");
    for reason in [
        "invalid_flow_token",
        "domain_not_served",
        "route_not_allowed",
        "maddr_not_allowed",
        "stray_response",
        "call_limit",
    ] {
        assert!(
            refused.get(reason).copied().unwrap_or(0) > 0,
            "never refused: {reason}"
        );
    }
}
