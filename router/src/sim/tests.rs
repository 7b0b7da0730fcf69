use super::*;
use crate::policy::{PickerConfig, Policy, Reason};

fn costs() -> Costs {
    Costs {
        vision_s: 0.5,
        vision_tokens: 32,
        prefill_fixed_s: 0.01,
        prefill_per_token_s: 0.001,
        step_fixed_s: 0.015,
        step_per_seq_s: 0.002,
    }
}

fn fleet(workers: usize, policy: Policy, scrape_interval_s: f64) -> FleetConfig {
    FleetConfig {
        workers,
        worker: WorkerConfig {
            max_batch: 8,
            kv_tokens: 65_536,
            encoder_cache_entries: 32,
        },
        costs: costs(),
        router: RouterConfig {
            picker: PickerConfig {
                policy,
                ..PickerConfig::default()
            },
            scrape_interval_s,
            hold_max: 100,
            hold_timeout_s: 60.0,
        },
        autoscale: None,
    }
}

/// A pool of 64 images: more than one worker's cache (32 entries), which also takes the unique
/// images; a quarter of it (each worker's share under affinity) fits with room to spare.
fn repeated_images(seed: u64, rate: f64, seconds: f64) -> Workload {
    Workload {
        pool_size: 64,
        output_tokens: (4, 32),
        ..Workload::steady(seed, rate, seconds)
    }
}

#[test]
fn the_same_seed_gives_the_same_results() {
    let w = repeated_images(7, 4.0, 60.0);
    let cfg = fleet(3, Policy::LeastLoadAffinity, 0.1);
    let a = simulate(&cfg, &generate(&w));
    let b = simulate(&cfg, &generate(&w));
    assert_eq!(a, b);
    assert!(a.requests.iter().all(|o| o.finish_s.is_some()));
    let other = generate(&Workload { seed: 8, ..w });
    assert_ne!(simulate(&cfg, &other).requests.len(), 0);
    assert_ne!(
        generate(&repeated_images(8, 4.0, 60.0)),
        generate(&repeated_images(7, 4.0, 60.0))
    );
}

#[test]
fn with_one_worker_every_policy_gives_the_same_results() {
    let reqs = generate(&repeated_images(3, 1.5, 120.0));
    let timings = |policy| {
        let o = simulate(&fleet(1, policy, 1.0), &reqs);
        let t: Vec<_> = o
            .requests
            .iter()
            .map(|r| (r.worker, r.first_token_s, r.finish_s))
            .collect();
        (t, o.cache_hits, o.cache_misses, o.busy_s)
    };
    let rr = timings(Policy::RoundRobin);
    assert!(rr.1 > 0, "the workload repeats images");
    assert_eq!(rr, timings(Policy::LeastLoad));
    assert_eq!(rr, timings(Policy::LeastLoadAffinity));
}

#[test]
fn affinity_hits_the_encoder_cache_more_than_round_robin_on_repeated_images() {
    let w = repeated_images(11, 3.0, 300.0);
    let reqs = generate(&w);
    let hit_rate = |policy| {
        let o = simulate(&fleet(4, policy, 0.1), &reqs);
        Summary::new(&reqs, &o, &costs(), 10.0, w.duration_s())
    };
    let rr = hit_rate(Policy::RoundRobin);
    let affinity = hit_rate(Policy::LeastLoadAffinity);
    // Repeated images are 70% of all: round robin's caches hold less than half of the pool
    // each, affinity's hold each worker's share of it.
    assert!(rr.hit_rate < 0.3, "round robin {}", rr.hit_rate);
    assert!(
        affinity.hit_rate > rr.hit_rate + 0.25,
        "affinity {} vs round robin {}",
        affinity.hit_rate,
        rr.hit_rate
    );
    assert!(
        affinity.reasons[Reason::ALL
            .iter()
            .position(|r| *r == Reason::Affinity)
            .unwrap_or(0)]
            > 0
    );
    assert_eq!(affinity.answered, reqs.len());
}

fn from_zero(hold_timeout_s: f64, start_delay_s: f64) -> (FleetConfig, Vec<Request>) {
    let mut cfg = fleet(0, Policy::LeastLoadAffinity, 1.0);
    cfg.router.hold_timeout_s = hold_timeout_s;
    cfg.autoscale = Some(Autoscale {
        min: 0,
        max: 4,
        poll_s: 15.0,
        target: 8.0,
        start_delay_s,
        cooldown_s: 300.0,
    });
    // One request at t = 1 s, then nothing.
    let reqs = vec![Request {
        arrival_s: 1.0,
        images: Vec::new(),
        prompt_tokens: 20,
        output_tokens: 10,
    }];
    (cfg, reqs)
}

#[test]
fn scale_from_zero_answers_a_request_held_longer_than_the_start_delay() {
    let (cfg, reqs) = from_zero(120.0, 90.0);
    let o = simulate(&cfg, &reqs);
    let s = Summary::new(&reqs, &o, &cfg.costs, 10.0, 1.0);
    assert_eq!((s.answered, s.refused), (1, 0));
    // Held from t = 1 until the first poll (t = 15) plus the start delay.
    assert_eq!(s.first_wait_s, Some(15.0 + 90.0 - 1.0));
    assert_eq!(o.workers_started, 1);
    // The worker stops after the cooldown: alive from 15 s to the first poll at least 300 s
    // after its last busy poll.
    assert!(
        o.alive_s >= 90.0 + 300.0 && o.alive_s <= 90.0 + 300.0 + 2.0 * 15.0 + 1.0,
        "{}",
        o.alive_s
    );
}

#[test]
fn scale_from_zero_refuses_a_request_held_shorter_than_the_start_delay() {
    let (cfg, reqs) = from_zero(60.0, 90.0);
    let o = simulate(&cfg, &reqs);
    assert!(o.requests[0].refused);
    assert_eq!(o.requests[0].finish_s, None);
    // The autoscaler still started a worker for it.
    assert_eq!(o.workers_started, 1);
}

#[test]
fn unreported_requests_spread_a_burst_between_scrapes() {
    // A long request runs on worker 0 when the scrape at t = 1 s sees it (score 1/8 + KV); a
    // burst of 11 then arrives before the next scrape. On the scraped gauges alone worker 0
    // would look busiest and get none of the burst; with the router's unreported counts the
    // burst fills the others first and then worker 0, 3 requests each.
    let mut reqs = vec![Request {
        arrival_s: 0.1,
        images: Vec::new(),
        prompt_tokens: 20,
        output_tokens: 2000,
    }];
    reqs.extend((0..11).map(|i| Request {
        arrival_s: 1.5 + f64::from(i) * 1e-6,
        images: Vec::new(),
        prompt_tokens: 20,
        output_tokens: 50,
    }));
    let o = simulate(&fleet(4, Policy::LeastLoad, 1.0), &reqs);
    let mut per_worker = [0; 4];
    for r in &o.requests {
        per_worker[r.worker.unwrap_or(0)] += 1;
    }
    assert_eq!(per_worker, [3, 3, 3, 3]);
}

#[test]
fn percentiles_are_nearest_rank_and_capacity_is_positive() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&v, 50.0), 50.0);
    assert_eq!(percentile(&v, 99.0), 99.0);
    assert_eq!(percentile(&v, 100.0), 100.0);
    assert!(percentile(&[], 50.0).is_nan());
    let cfg = fleet(1, Policy::RoundRobin, 0.0);
    let w = Workload::steady(1, 1.0, 1.0);
    let c = capacity_per_worker(&cfg.costs, &cfg.worker, &w);
    // 0.9 images x 0.5 s of vision dominate a request's cost.
    assert!(c > 1.0 && c < 2.0, "{c}");
}
