//! Logits processors and warpers with HF transformers 4.28 semantics, applied in place on one row of
//! scores. Processors (always): no-repeat n-gram, then min length. Warpers (sampling modes only):
//! temperature, top-k, top-p.

/// Bans every token that would complete an n-gram already present in `ids` (BOS placeholder
/// included), as `NoRepeatNGramLogitsProcessor`.
pub fn no_repeat_ngram(ids: &[u32], n: usize, scores: &mut [f32]) {
    for t in ngram_bans(ids, n) {
        if let Some(s) = scores.get_mut(t as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// The tokens [`no_repeat_ngram`] bans after `ids` (repeats possible).
pub fn ngram_bans(ids: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || ids.len() + 1 < n {
        return Vec::new();
    }
    let prefix = &ids[ids.len() + 1 - n..];
    ids.windows(n)
        .filter(|w| &w[..n - 1] == prefix)
        .map(|w| w[n - 1])
        .collect()
}

/// Bans EOS while the sequence (BOS placeholder included) is shorter than `min_length`.
pub fn min_length(ids_len: usize, min_length: usize, eos: u32, scores: &mut [f32]) {
    if ids_len < min_length {
        if let Some(s) = scores.get_mut(eos as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// Divides by the temperature (skipped at 1.0, as HF does).
pub fn temperature(t: f32, scores: &mut [f32]) {
    if t != 1.0 && t > 0.0 {
        scores.iter_mut().for_each(|s| *s /= t);
    }
}

/// Keeps scores >= the k-th largest (ties kept), `k = max(top_k, min_keep)`; 0 disables.
pub fn top_k(k: usize, min_keep: usize, scores: &mut [f32]) {
    if k == 0 {
        return;
    }
    let k = k.max(min_keep).min(scores.len());
    let mut sorted: Vec<f32> = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    scores
        .iter_mut()
        .filter(|s| **s < kth)
        .for_each(|s| *s = f32::NEG_INFINITY);
}

/// Nucleus filtering: sort ascending, remove the entries whose cumulative probability is
/// `<= 1 - top_p`, always keeping the `min_keep` largest. `top_p >= 1` disables.
pub fn top_p(p: f32, min_keep: usize, scores: &mut [f32]) {
    if p >= 1.0 {
        return;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Ascending, stable (torch.sort is stable on CPU for these sizes' semantics).
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let sorted: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
    let probs = softmax(&sorted);
    let n = sorted.len();
    let mut cum = 0f32;
    let mut remove = vec![false; n];
    for (j, pr) in probs.iter().enumerate() {
        cum += pr;
        remove[j] = cum <= 1.0 - p;
    }
    for r in remove.iter_mut().skip(n.saturating_sub(min_keep)) {
        *r = false;
    }
    for (j, &i) in order.iter().enumerate() {
        if remove[j] {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

/// Softmax in f32 (max-subtracted); all `-inf` gives all zeros.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; x.len()];
    }
    let e: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// `log_softmax` in f32.
pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    let log_sum = sum.ln();
    x.iter().map(|v| v - max - log_sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigram_ban_uses_the_history() {
        let mut s = vec![0f32; 10];
        no_repeat_ngram(&[1, 5, 7, 5], 2, &mut s);
        assert_eq!(s[7], f32::NEG_INFINITY);
        assert_eq!(s.iter().filter(|v| v.is_infinite()).count(), 1);
    }

    #[test]
    fn min_length_counts_the_placeholder() {
        let mut s = vec![0f32; 4];
        min_length(1, 2, 2, &mut s);
        assert_eq!(s[2], f32::NEG_INFINITY);
        let mut s = vec![0f32; 4];
        min_length(2, 2, 2, &mut s);
        assert_eq!(s[2], 0.0);
    }

    #[test]
    fn top_k_keeps_ties_and_min_keep() {
        let mut s = vec![1.0, 3.0, 3.0, 2.0, 0.5];
        top_k(2, 1, &mut s);
        assert_eq!(
            s,
            vec![
                f32::NEG_INFINITY,
                3.0,
                3.0,
                f32::NEG_INFINITY,
                f32::NEG_INFINITY
            ]
        );
        let mut s = vec![1.0, 4.0, 3.0];
        top_k(1, 2, &mut s);
        assert_eq!(s[0], f32::NEG_INFINITY);
        assert!(s[1].is_finite() && s[2].is_finite());
    }

    #[test]
    fn top_p_drops_the_tail() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]
        let mut s: Vec<f32> = [0.64f32, 0.24, 0.09, 0.03].iter().map(|p| p.ln()).collect();
        top_p(0.8, 1, &mut s);
        assert!(s[0].is_finite() && s[1].is_finite());
        assert!(s[2].is_infinite() && s[3].is_infinite());
    }
}
