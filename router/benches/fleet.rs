//! The fleet simulation's tables (Markdown): routing policies side by side on one workload,
//! scrape intervals, affinity's overload margin, and scaling from zero. `cargo bench -p
//! lynx-router --bench fleet`; the model is `lynx_router::sim`, the figures' reading
//! `docs/perf/fleet.md`.

use lynx_router::policy::{PickerConfig, Policy};
use lynx_router::sim::{
    capacity_per_worker, generate, percentile, simulate, Autoscale, Costs, FleetConfig, Outcome,
    Request, RouterConfig, Summary, WorkerConfig, Workload,
};

const SEED: u64 = 20_261_208;
const WORKERS: usize = 8;
const SLO_FACTOR: f64 = 10.0;
/// 256 MiB of encoder cache (the worker's default) over 7B-sized encodings: 32 tokens x 4096
/// x 2 bytes (bf16) = 256 KiB each.
const CACHE_ENTRIES: usize = 1024;

struct Profile {
    name: &'static str,
    costs: Costs,
    max_batch: usize,
    seconds: f64,
}

fn profiles() -> [Profile; 2] {
    [
        Profile {
            // Measured: `lynx-worker serve --embedded small` on 2 CPU cores (docs/perf/fleet.md).
            name: "CPU small (measured)",
            costs: Costs {
                vision_s: 1.03,
                vision_tokens: 32,
                prefill_fixed_s: 0.015,
                prefill_per_token_s: 0.0009,
                step_fixed_s: 0.0041,
                step_per_seq_s: 0.0025,
            },
            max_batch: 8,
            seconds: 7200.0,
        },
        Profile {
            // Derived for Lynx-7B in bf16 on one H100 SXM (docs/perf/fleet.md): not measured.
            name: "H100 7B (derived)",
            costs: Costs {
                vision_s: 0.010,
                vision_tokens: 32,
                prefill_fixed_s: 0.005,
                prefill_per_token_s: 0.000_03,
                step_fixed_s: 0.0065,
                step_per_seq_s: 0.000_1,
            },
            max_batch: 32,
            seconds: 900.0,
        },
    ]
}

fn fleet(p: &Profile, picker: PickerConfig, scrape_interval_s: f64) -> FleetConfig {
    FleetConfig {
        workers: WORKERS,
        worker: worker_config(p),
        costs: p.costs,
        router: RouterConfig {
            picker,
            scrape_interval_s,
            hold_max: 1024,
            hold_timeout_s: 60.0,
        },
        autoscale: None,
    }
}

fn policy(policy: Policy) -> PickerConfig {
    PickerConfig {
        policy,
        ..PickerConfig::default()
    }
}

fn ms(s: f64) -> String {
    format!("{:.0}", s * 1000.0)
}

fn row(label: &str, reqs: &[Request], o: &Outcome, costs: &Costs, window_s: f64) -> String {
    let s = Summary::new(reqs, o, costs, SLO_FACTOR, window_s);
    format!(
        "| {label} | {} | {} | {} | {} | {} | {:.2} | {:.1}% | {:.0} | {:.0} |",
        s.answered,
        ms(s.latency_s.0),
        ms(s.latency_s.1),
        ms(s.ttft_s.0),
        ms(s.ttft_s.1),
        s.goodput,
        100.0 * s.hit_rate,
        s.busy_s,
        s.alive_s,
    )
}

/// A worker of profile `p`.
fn worker_config(p: &Profile) -> WorkerConfig {
    WorkerConfig {
        max_batch: p.max_batch,
        kv_tokens: 65_536,
        encoder_cache_entries: CACHE_ENTRIES,
    }
}

const HEADER: &str = "| answered | latency p50 ms | p99 ms | TTFT p50 ms | p99 ms | goodput req/s | encoder hit rate | busy GPU-s | alive GPU-s |";

fn policies_table(p: &Profile, workload: &Workload) -> f64 {
    let cap = capacity_per_worker(&p.costs, &worker_config(p), workload);
    println!(
        "\n### {}: policies, {WORKERS} workers, scrape every 1 s\n\nNominal capacity (every image encoded): {:.2} req/s per worker, {:.1} for the fleet; {:.0} s of arrivals.\n",
        p.name,
        cap,
        cap * WORKERS as f64,
        p.seconds
    );
    println!("| load | policy {HEADER}");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for load in [0.5, 0.8, 0.95] {
        let w = Workload::steady(SEED, load * cap * WORKERS as f64, p.seconds);
        let reqs = generate(&w);
        for pol in Policy::ALL {
            let o = simulate(&fleet(p, policy(pol), 1.0), &reqs);
            let label = format!("{:.0}% | {pol}", load * 100.0);
            println!("{}", row(&label, &reqs, &o, &p.costs, p.seconds));
        }
    }
    cap
}

fn scrape_table(p: &Profile, cap: f64) {
    println!("\n### {}: scrape interval (load 95%)\n", p.name);
    println!("| policy | scrape interval {HEADER}");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let w = Workload::steady(SEED, 0.95 * cap * WORKERS as f64, p.seconds);
    let reqs = generate(&w);
    for pol in [Policy::LeastLoad, Policy::LeastLoadAffinity] {
        for interval in [0.0, 0.1, 1.0, 5.0] {
            let o = simulate(&fleet(p, policy(pol), interval), &reqs);
            let label = format!("{pol} | {} ms", interval * 1000.0);
            println!("{}", row(&label, &reqs, &o, &p.costs, p.seconds));
        }
    }
}

fn margin_table(p: &Profile, cap: f64) {
    println!(
        "\n### {}: affinity's overload margin (least-load-affinity, load 95%, scrape 1 s)\n",
        p.name
    );
    println!("| margin | affinity / overloaded / least-load decisions {HEADER}");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let w = Workload::steady(SEED, 0.95 * cap * WORKERS as f64, p.seconds);
    let reqs = generate(&w);
    for margin in [0.5, 1.0, 2.0, 4.0, 8.0, f64::INFINITY] {
        let picker = PickerConfig {
            overload_margin: margin,
            ..PickerConfig::default()
        };
        let o = simulate(&fleet(p, picker, 1.0), &reqs);
        let s = Summary::new(&reqs, &o, &p.costs, SLO_FACTOR, p.seconds);
        let label = format!(
            "{margin} | {} / {} / {}",
            s.reasons[2], s.reasons[3], s.reasons[1]
        );
        println!("{}", row(&label, &reqs, &o, &p.costs, p.seconds));
    }
}

fn scale_table(p: &Profile) {
    let cap = capacity_per_worker(
        &p.costs,
        &worker_config(p),
        &Workload::steady(SEED, 1.0, 1.0),
    );
    let max = 4;
    // A trickle (a quarter of one worker) for 10 min, a quiet hour, a burst of 2.5 workers'
    // worth for 10 min, a quiet 30 min.
    let phases = vec![
        (600.0, 0.25 * cap),
        (3600.0, 0.0),
        (600.0, 2.5 * cap),
        (1800.0, 0.0),
    ];
    let workload = Workload {
        phases,
        ..Workload::steady(SEED, 1.0, 1.0)
    };
    let reqs = generate(&workload);
    let window = workload.duration_s();
    println!(
        "\n### {}: scale from zero (0..={max} workers, hold at most 1024 requests)\n\n{} requests: {:.2} req/s for 600 s, 3600 s quiet, {:.2} req/s for 600 s, 1800 s quiet.\n",
        p.name,
        reqs.len(),
        0.25 * cap,
        2.5 * cap
    );
    println!("| fleet | poll s | start delay s | hold timeout s | first request waited s | held | held answered | held timed out | refused, hold full | latency p50 ms | p99 ms | busy GPU-s | alive GPU-s | alive vs fleet at max |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let at_max = {
        let mut cfg = fleet(p, PickerConfig::default(), 1.0);
        cfg.workers = max;
        simulate(&cfg, &reqs)
    };
    // A fleet kept at its max is alive for the whole window, not only until its last answer.
    let at_max_alive = max as f64 * window.max(at_max.end_s);
    let print = |label: &str, o: &Outcome, alive: f64| {
        let s = Summary::new(&reqs, o, &p.costs, SLO_FACTOR, window);
        let held = o.requests.iter().filter(|r| r.held).count();
        let held_ok = o
            .requests
            .iter()
            .filter(|r| r.held && r.finish_s.is_some())
            .count();
        let timed_out = o.requests.iter().filter(|r| r.held && r.refused).count();
        let full = o.requests.iter().filter(|r| !r.held && r.refused).count();
        let lat: Vec<f64> = reqs
            .iter()
            .zip(&o.requests)
            .filter_map(|(q, r)| r.finish_s.map(|f| f - q.arrival_s))
            .collect();
        println!(
            "| {label} | {} | {held} | {held_ok} | {timed_out} | {full} | {} | {} | {:.0} | {:.0} | {:.0}% |",
            s.first_wait_s.map_or("-".into(), |w| format!("{w:.1}")),
            ms(percentile(&lat, 50.0)),
            ms(percentile(&lat, 99.0)),
            o.busy_s,
            alive,
            100.0 * alive / at_max_alive,
        );
    };
    print(&format!("{max} always | - | - | -"), &at_max, at_max_alive);
    for (poll, delay, hold) in [
        (30.0, 90.0, 60.0),
        (30.0, 90.0, 180.0),
        (15.0, 90.0, 180.0),
        (15.0, 60.0, 120.0),
        (15.0, 120.0, 300.0),
    ] {
        let mut cfg = fleet(p, PickerConfig::default(), 1.0);
        cfg.workers = 0;
        cfg.router.hold_timeout_s = hold;
        cfg.autoscale = Some(Autoscale {
            min: 0,
            max,
            poll_s: poll,
            target: p.max_batch as f64,
            start_delay_s: delay,
            cooldown_s: 300.0,
        });
        let o = simulate(&cfg, &reqs);
        print(
            &format!("0..={max} | {poll} | {delay} | {hold}"),
            &o,
            o.alive_s,
        );
    }
}

fn main() {
    println!("## Fleet simulation (seed {SEED}, SLO {SLO_FACTOR}x unloaded latency, encoder cache {CACHE_ENTRIES} entries per worker)\n");
    println!("| profile | vision ms/image | prefill ms fixed + per token | step ms fixed + per sequence | max batch |");
    println!("|---|---|---|---|---|");
    for p in profiles() {
        let c = p.costs;
        println!(
            "| {} | {:.0} | {:.0} + {:.3} | {:.1} + {:.2} | {} |",
            p.name,
            c.vision_s * 1e3,
            c.prefill_fixed_s * 1e3,
            c.prefill_per_token_s * 1e3,
            c.step_fixed_s * 1e3,
            c.step_per_seq_s * 1e3,
            p.max_batch
        );
    }
    for p in profiles() {
        let started = std::time::Instant::now();
        let w = Workload::steady(SEED, 1.0, p.seconds);
        let cap = policies_table(&p, &w);
        scrape_table(&p, cap);
        margin_table(&p, cap);
        scale_table(&p);
        eprintln!(
            "{}: simulated in {:.1} s",
            p.name,
            started.elapsed().as_secs_f64()
        );
    }
}
