use super::*;

fn load(queue: f64) -> Load {
    Load {
        queue_length: queue,
        ..Load::default()
    }
}

fn picker(policy: Policy) -> Picker<&'static str> {
    Picker::new(PickerConfig {
        policy,
        ..PickerConfig::default()
    })
}

fn key(n: u8) -> ImageKey {
    image_key(&[n])
}

#[test]
fn round_robin_cycles_whatever_the_load() {
    let mut p = picker(Policy::RoundRobin);
    let c = [("a", load(9.0)), ("b", load(0.0)), ("c", load(3.0))];
    let picked: Vec<_> = (0..6).filter_map(|_| p.pick(&c, &[])).collect();
    let names: Vec<_> = picked.iter().map(|(w, _)| *w).collect();
    assert_eq!(names, ["a", "b", "c", "a", "b", "c"]);
    assert!(picked.iter().all(|(_, r)| *r == Reason::RoundRobin));
    assert_eq!(p.affinity_len(), 0);
}

#[test]
fn empty_candidates_pick_nothing() {
    let mut p = picker(Policy::LeastLoadAffinity);
    assert_eq!(p.pick(&[], &[key(1)]), None);
    assert_eq!(p.affinity_len(), 0);
}

#[test]
fn least_load_picks_the_minimum_and_spreads_ties() {
    let mut p = picker(Policy::LeastLoad);
    let c = [("a", load(2.0)), ("b", load(1.0)), ("c", load(5.0))];
    for _ in 0..4 {
        assert_eq!(p.pick(&c, &[]), Some(("b", Reason::LeastLoad)));
    }
    let equal = [("a", load(1.0)), ("b", load(1.0)), ("c", load(1.0))];
    let names: Vec<_> = (0..6)
        .filter_map(|_| p.pick(&equal, &[]))
        .map(|(w, _)| w)
        .collect();
    // Turn 4 starts the scan at index 1.
    assert_eq!(names, ["b", "c", "a", "b", "c", "a"]);
}

#[test]
fn score_weighs_running_sequences_and_kv_below_waiting_requests() {
    let waiting = load(1.0);
    let running = Load {
        running_sequences: 4.0,
        kv_cache_usage: 0.4,
        ..Load::default()
    };
    assert!(score(&running) < score(&waiting));
    assert_eq!(score(&running), 4.0 / RUNNING_PER_WAITING + 0.4);
}

#[test]
fn unreported_requests_count_as_load() {
    let mut p = picker(Policy::LeastLoad);
    let sent_to_a = Load {
        unreported: 2.0,
        ..Load::default()
    };
    let c = [("a", sent_to_a), ("b", load(1.0))];
    assert_eq!(p.pick(&c, &[]), Some(("b", Reason::LeastLoad)));
    assert_eq!(score(&sent_to_a), 2.0);
}

#[test]
fn affinity_follows_a_key_to_the_worker_it_went_to() {
    let mut p = picker(Policy::LeastLoadAffinity);
    let idle = [("a", load(0.0)), ("b", load(0.0)), ("c", load(0.0))];
    let (first, reason) = p.pick(&idle, &[key(7)]).expect("a worker");
    assert_eq!(
        reason,
        Reason::LeastLoad,
        "an unknown key is routed by load"
    );
    // Whatever the rotation, the key goes back where it went, while that worker is not
    // overloaded (a load of 1 is within the default margin of 2).
    let busier: Vec<_> = idle
        .iter()
        .map(|(w, _)| (*w, load(if *w == first { 1.0 } else { 0.0 })))
        .collect();
    for _ in 0..5 {
        assert_eq!(p.pick(&busier, &[key(7)]), Some((first, Reason::Affinity)));
        // Requests without images still spread by load, away from the busier worker.
        let (other, r) = p.pick(&busier, &[]).expect("a worker");
        assert_ne!(other, first);
        assert_eq!(r, Reason::LeastLoad);
    }
    assert_eq!(p.affinity_len(), 1);
}

#[test]
fn affinity_follows_the_majority_of_a_requests_keys() {
    let mut p = picker(Policy::LeastLoadAffinity);
    let c = [("a", load(0.0)), ("b", load(0.0))];
    p.pick(&c[..1], &[key(1), key(2)]); // both to a
    p.pick(&c[1..], &[key(3)]); // to b
    assert_eq!(
        p.pick(&c, &[key(3), key(1), key(2)]),
        Some(("a", Reason::Affinity))
    );
    // Now all three keys are remembered on a.
    assert_eq!(p.pick(&c, &[key(3)]), Some(("a", Reason::Affinity)));
    // A tie goes to the worker of the earliest key.
    p.pick(&c[1..], &[key(4)]);
    assert_eq!(p.pick(&c, &[key(4), key(1)]), Some(("b", Reason::Affinity)));
}

#[test]
fn affinity_yields_to_an_overloaded_worker() {
    let mut p = picker(Policy::LeastLoadAffinity);
    let c = [("a", load(0.0)), ("b", load(0.0))];
    p.pick(&c[..1], &[key(1)]);
    let margin = PickerConfig::default().overload_margin;
    let at_margin = [("a", load(margin)), ("b", load(0.0))];
    assert_eq!(p.pick(&at_margin, &[key(1)]), Some(("a", Reason::Affinity)));
    let over = [("a", load(margin + 0.5)), ("b", load(0.0))];
    assert_eq!(
        p.pick(&over, &[key(1)]),
        Some(("b", Reason::AffinityOverloaded))
    );
    // The key now follows b, where it was encoded last.
    assert_eq!(p.pick(&c, &[key(1)]), Some(("b", Reason::Affinity)));
}

#[test]
fn a_remembered_worker_that_is_not_a_candidate_is_ignored() {
    let mut p = picker(Policy::LeastLoadAffinity);
    p.pick(&[("a", load(0.0))], &[key(1)]);
    let without_a = [("b", load(3.0)), ("c", load(1.0))];
    assert_eq!(
        p.pick(&without_a, &[key(1)]),
        Some(("c", Reason::LeastLoad))
    );
}

#[test]
fn capacity_bound_evicts_the_oldest_key() {
    let mut p: Picker<&str> = Picker::new(PickerConfig {
        affinity_capacity: 2,
        ..PickerConfig::default()
    });
    let c = [("a", load(0.0)), ("b", load(0.0))];
    p.pick(&c[..1], &[key(1)]);
    p.pick(&c[..1], &[key(2)]);
    p.pick(&c[1..], &[key(3)]); // evicts key 1
    assert_eq!(p.affinity_len(), 2);
    // Key 1 is unknown again: routed by load (b is busier).
    let b_busy = [("b", load(1.0)), ("a", load(0.0))];
    assert_eq!(p.pick(&b_busy, &[key(1)]), Some(("a", Reason::LeastLoad)));
    assert_eq!(p.pick(&c, &[key(3)]), Some(("b", Reason::Affinity)));
}

#[test]
fn forget_drops_a_workers_keys() {
    let mut p = picker(Policy::LeastLoadAffinity);
    let c = [("a", load(0.0)), ("b", load(0.0))];
    p.pick(&c[..1], &[key(1), key(2)]);
    p.pick(&c[1..], &[key(3)]);
    p.forget(&"a");
    assert_eq!(p.affinity_len(), 1);
    let b_busy = [("a", load(0.0)), ("b", load(1.0))];
    assert_eq!(p.pick(&b_busy, &[key(3)]), Some(("b", Reason::Affinity)));
}

#[test]
fn policies_parse_and_print_their_names() {
    for p in Policy::ALL {
        assert_eq!(p.as_str().parse::<Policy>(), Ok(p));
        assert_eq!(p.to_string(), p.as_str());
    }
    assert!("least_load".parse::<Policy>().is_err());
    let labels: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        labels,
        [
            "round_robin",
            "least_load",
            "affinity",
            "affinity_overloaded"
        ]
    );
}

#[test]
fn image_key_is_the_sha256_of_the_bytes() {
    let k = image_key(b"abc");
    assert_eq!(
        k[..4],
        [0xba, 0x78, 0x16, 0xbf],
        "SHA-256(\"abc\") begins ba7816bf"
    );
    assert_ne!(image_key(b"abd"), k);
}
