//! Decisions of the scheduler, without a model.

use std::time::{Duration, Instant};

use super::*;

fn cfg() -> SchedulerConfig {
    SchedulerConfig {
        max_batch_size: 4,
        max_batch_delay: Duration::from_millis(10),
        max_batch_total_tokens: 1000,
        max_queue: 8,
        kv_block_size: 16,
        kv_blocks: 1000,
        ageing: Duration::from_secs(10),
    }
}

fn cost(tokens: usize, beams: usize) -> RequestCost {
    RequestCost {
        prompt_tokens: tokens / 2,
        vision_tokens: tokens - tokens / 2 - 10,
        max_new_tokens: 10,
        beams,
    }
}

fn entry(id: RequestId, priority: u8, at: Instant, c: RequestCost) -> Entry<()> {
    Entry {
        id,
        priority,
        arrived: at,
        deadline: None,
        cost: c,
        payload: (),
    }
}

fn ids(d: &Decision<()>) -> Vec<RequestId> {
    d.admitted.iter().map(|e| e.id).collect()
}

#[test]
fn waits_for_a_batch_then_admits_after_the_delay() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(cfg());
    s.enqueue(entry(1, 1, t0, cost(100, 1))).ok();
    let d = s.next_batch(t0 + Duration::from_millis(3));
    assert_eq!(d.reason, Reason::WaitingForBatch);
    assert_eq!(d.wake_in, Some(Duration::from_millis(7)));
    s.enqueue(entry(2, 1, t0 + Duration::from_millis(4), cost(100, 1)))
        .ok();
    let d = s.next_batch(t0 + Duration::from_millis(10));
    assert_eq!(
        (d.reason, ids(&d)),
        (Reason::Admitted, vec![1, 2]),
        "both go together"
    );
}

#[test]
fn a_full_batch_does_not_wait() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(cfg());
    for id in 0..4 {
        s.enqueue(entry(id, 1, t0, cost(100, 1))).ok();
    }
    let d = s.next_batch(t0);
    assert_eq!(ids(&d), vec![0, 1, 2, 3]);
}

#[test]
fn new_requests_join_a_running_batch_at_once() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(cfg());
    s.enqueue(entry(1, 1, t0, cost(100, 1))).ok();
    assert_eq!(ids(&s.next_batch(t0 + Duration::from_millis(20))), vec![1]);
    s.enqueue(entry(2, 1, t0 + Duration::from_millis(21), cost(100, 1)))
        .ok();
    let d = s.next_batch(t0 + Duration::from_millis(21));
    assert_eq!(
        ids(&d),
        vec![2],
        "continuous batching: no delay while running"
    );
    assert_eq!(s.running_requests(), 2);
}

#[test]
fn token_budget_counts_vision_tokens_and_beams() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(cfg());
    s.enqueue(entry(1, 1, t0, cost(300, 2))).ok(); // 600 tokens
    s.enqueue(entry(2, 1, t0, cost(300, 1))).ok(); // 300
    s.enqueue(entry(3, 1, t0, cost(200, 1))).ok(); // 200: over budget with the two before
    let d = s.next_batch(t0 + Duration::from_secs(1));
    assert_eq!((ids(&d), d.reason), (vec![1, 2], Reason::Admitted));
    assert_eq!(s.running_tokens(), 900);
    let d = s.next_batch(t0 + Duration::from_secs(1));
    assert_eq!((ids(&d), d.reason), (vec![], Reason::TokenBudget));
    assert!(s.finish(1));
    assert_eq!(ids(&s.next_batch(t0 + Duration::from_secs(1))), vec![3]);
}

#[test]
fn batch_size_limits_running_requests() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(cfg());
    for id in 0..6 {
        s.enqueue(entry(id, 1, t0, cost(50, 1))).ok();
    }
    assert_eq!(s.next_batch(t0).admitted.len(), 4);
    let d = s.next_batch(t0);
    assert_eq!(d.reason, Reason::BatchFull);
    assert_eq!(s.waiting(), 2);
}

#[test]
fn kv_blocks_are_reserved_and_freed() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(SchedulerConfig {
        kv_blocks: 20,
        ..cfg()
    });
    // 100 tokens per sequence = 7 blocks of 16; 2 beams = 14 blocks.
    s.enqueue(entry(1, 1, t0, cost(100, 2))).ok();
    s.enqueue(entry(2, 1, t0, cost(100, 1))).ok();
    let d = s.next_batch(t0 + Duration::from_secs(1));
    assert_eq!(ids(&d), vec![1]);
    let d = s.next_batch(t0 + Duration::from_secs(1));
    assert_eq!(d.reason, Reason::KvCacheFull);
    assert!((s.kv_usage() - 14.0 / 20.0).abs() < 1e-12);
    let tables = s.block_tables(1);
    assert_eq!(tables.len(), 2);
    assert!(tables.iter().all(|t| t.len() == 7));
    assert_eq!(s.running_sequences(), 2);
    s.finish(1);
    assert_eq!(s.kv_usage(), 0.0);
    assert_eq!(ids(&s.next_batch(t0 + Duration::from_secs(1))), vec![2]);
}

#[test]
fn higher_priority_first_fifo_within_a_level() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(SchedulerConfig {
        max_batch_size: 1,
        ..cfg()
    });
    s.enqueue(entry(1, 1, t0, cost(50, 1))).ok();
    s.enqueue(entry(2, 3, t0 + Duration::from_millis(1), cost(50, 1)))
        .ok();
    s.enqueue(entry(3, 1, t0 + Duration::from_millis(2), cost(50, 1)))
        .ok();
    s.enqueue(entry(4, 3, t0 + Duration::from_millis(3), cost(50, 1)))
        .ok();
    let mut order = Vec::new();
    for _ in 0..4 {
        let d = s.next_batch(t0 + Duration::from_millis(50));
        let id = ids(&d)[0];
        order.push(id);
        s.finish(id);
    }
    assert_eq!(order, vec![2, 4, 1, 3]);
}

#[test]
fn ageing_prevents_starvation_of_low_priorities() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(SchedulerConfig {
        max_batch_size: 1,
        ..cfg()
    });
    s.enqueue(entry(1, 0, t0, cost(50, 1))).ok();
    // A steady stream of high-priority requests arriving later.
    let later = t0 + Duration::from_secs(35);
    s.enqueue(entry(2, 3, later, cost(50, 1))).ok();
    let d = s.next_batch(later);
    assert_eq!(ids(&d), vec![1], "waited 35 s = 3 levels + arrival order");
}

#[test]
fn expired_requests_leave_the_queue() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(cfg());
    let mut e = entry(1, 1, t0, cost(50, 1));
    e.deadline = Some(t0 + Duration::from_millis(5));
    s.enqueue(e).ok();
    s.enqueue(entry(2, 1, t0, cost(50, 1))).ok();
    let d = s.next_batch(t0 + Duration::from_millis(20));
    assert_eq!(d.expired.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1]);
    assert_eq!(ids(&d), vec![2]);
}

#[test]
fn queue_full_and_too_large_are_refused_at_enqueue() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(SchedulerConfig {
        max_queue: 2,
        ..cfg()
    });
    assert!(s.enqueue(entry(1, 1, t0, cost(50, 1))).is_ok());
    assert!(s.enqueue(entry(2, 1, t0, cost(50, 1))).is_ok());
    assert!(matches!(
        s.enqueue(entry(3, 1, t0, cost(50, 1))),
        Err(Rejection::QueueFull(_))
    ));
    let mut s = SchedulerState::new(cfg());
    match s.enqueue(entry(4, 1, t0, cost(600, 2))) {
        Err(Rejection::TooLarge { needed, limit, .. }) => assert_eq!((needed, limit), (1200, 1000)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(s.waiting(), 0);
}

#[test]
fn a_large_request_at_the_head_is_not_starved_by_small_ones() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(cfg());
    s.enqueue(entry(1, 1, t0, cost(800, 1))).ok();
    assert_eq!(ids(&s.next_batch(t0 + Duration::from_secs(1))), vec![1]);
    s.enqueue(entry(2, 1, t0 + Duration::from_secs(2), cost(900, 1)))
        .ok();
    s.enqueue(entry(3, 1, t0 + Duration::from_secs(3), cost(100, 1)))
        .ok();
    // 3 would fit next to 1, but 2 is ahead of it and does not: nothing overtakes 2.
    let d = s.next_batch(t0 + Duration::from_secs(4));
    assert_eq!((ids(&d), d.reason), (vec![], Reason::TokenBudget));
    s.finish(1);
    assert_eq!(
        ids(&s.next_batch(t0 + Duration::from_secs(5))),
        vec![2, 3],
        "2 first, then 3 fits"
    );
}

#[test]
fn cancel_removes_waiting_and_running_requests() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(cfg());
    for id in 1..=5 {
        s.enqueue(entry(id, 1, t0, cost(50, 1))).ok();
    }
    s.next_batch(t0);
    assert_eq!(s.running_requests(), 4);
    assert!(s.cancel(5).is_some(), "waiting request handed back");
    assert!(s.cancel(2).is_none(), "running request finished");
    assert_eq!((s.waiting(), s.running_requests()), (0, 3));
    assert_eq!(s.running_tokens(), 150);
}

#[test]
fn waiting_requests_whose_clients_left_are_removed_in_order() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(cfg());
    for id in 1..=4 {
        s.enqueue(entry(id, 1, t0, cost(50, 1))).ok();
    }
    let gone: Vec<RequestId> = s
        .remove_waiting_where(|e| e.id % 2 == 0)
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(gone, vec![2, 4]);
    assert_eq!(s.waiting(), 2);
    assert_eq!(ids(&s.next_batch(t0 + Duration::from_secs(1))), vec![1, 3]);
}

#[test]
fn skipping_the_batch_delay_admits_at_once_for_one_decision() {
    let t0 = Instant::now();
    let mut s = SchedulerState::new(cfg());
    s.enqueue(entry(1, 1, t0, cost(100, 1))).ok();
    s.skip_batch_delay();
    assert_eq!(ids(&s.next_batch(t0)), vec![1]);
    s.finish(1);
    s.enqueue(entry(2, 1, t0, cost(100, 1))).ok();
    let d = s.next_batch(t0 + Duration::from_millis(1));
    assert_eq!(d.reason, Reason::WaitingForBatch, "the delay applies again");
}
