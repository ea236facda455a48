//! The sequential class-mix test: after every prediction, a likelihood-ratio (G) test of the
//! predicted-class mix of the most recent predictions against the reference, scanned over suffix lengths.
//!
//! Window signals wait for a window to fill; an abrupt shift is visible much earlier in the mix of the
//! last few dozen predictions. Scanning suffixes of geometrically growing length (a windowed GLR-CUSUM)
//! finds a sharp shift from a short suffix and a mild one from a long suffix, without knowing either in
//! advance. Short suffixes are many more independent tests per stream than long ones, so each G pays
//! a scale penalty of 2 ln(longest / length) (a Bonferroni correction across scales: every length
//! then contributes about the same false-alarm rate), and the scan's score is the largest penalised
//! G. An alarm closes the open window early; the scan then restarts on fresh predictions, so each
//! alarm rests on evidence of its own and confirmation over k windows still means persistence.

use std::collections::VecDeque;

use crate::stats;

/// The G test (log-likelihood ratio) of the 2 × K table `reference` vs `window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GTest {
    /// 2 Σ O ln(O / E).
    pub statistic: f64,
    /// Classes seen on either side, minus one (chi-square degrees of freedom under homogeneity).
    pub dof: u32,
}

impl GTest {
    /// The chi-square p-value (for a scanned maximum it is nominal: not adjusted for the scan).
    pub fn p_value(&self) -> f64 {
        stats::chi2_sf(self.statistic, f64::from(self.dof.max(1)))
    }
}

/// The G test of `reference` vs `window` counts (scipy's `chi2_contingency(..., correction=False,
/// lambda_="log-likelihood")` with empty columns dropped). `None` when either row is empty.
pub fn g_test(reference: &[u64], window: &[u64]) -> Option<GTest> {
    let (r, w) = (
        reference.iter().sum::<u64>() as f64,
        window.iter().sum::<u64>() as f64,
    );
    if r == 0.0 || w == 0.0 {
        return None;
    }
    let n = r + w;
    let mut g = 0.0;
    let mut columns = 0;
    for (&a, &b) in reference.iter().zip(window) {
        if a + b == 0 {
            continue;
        }
        columns += 1;
        let column = (a + b) as f64;
        for (observed, row) in [(a as f64, r), (b as f64, w)] {
            if observed > 0.0 {
                g += observed * (observed * n / (row * column)).ln();
            }
        }
    }
    Some(GTest {
        statistic: 2.0 * g.max(0.0),
        dof: columns.max(1) - 1,
    })
}

/// The suffix with the largest penalised G at one point of the stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScanPoint {
    /// The score: G − 2 ln(longest suffix / this suffix's length).
    pub statistic: f64,
    /// The G statistic of that suffix, unpenalised.
    pub g: f64,
    /// Its degrees of freedom.
    pub dof: u32,
    /// Length of the suffix that gave it, predictions.
    pub suffix_events: usize,
    /// Predicted-class counts of that suffix.
    pub suffix_counts: [u64; 3],
    /// The reference class counts it was tested against.
    pub reference_counts: [u64; 3],
}

impl ScanPoint {
    /// Nominal p-value of the suffix's G (chi-square), not adjusted for scanning many suffixes.
    pub fn nominal_p_value(&self) -> f64 {
        GTest {
            statistic: self.g,
            dof: self.dof,
        }
        .p_value()
    }
}

/// The scan of one model version against its reference.
#[derive(Debug, Clone)]
pub struct ClassMixScan {
    reference: [u64; 3],
    /// Suffix lengths tested, ascending.
    lengths: Vec<usize>,
    /// Predicted classes since the last restart, newest last (at most the longest suffix).
    recent: VecDeque<u8>,
    /// Class counts of each suffix, `lengths` order.
    suffix_counts: Vec<[u64; 3]>,
    /// Predictions ever observed.
    seen: u64,
    /// Ok windows waiting to join the reference: (predictions seen when it closed, its class
    /// counts, the reference cap).
    pending: VecDeque<(u64, [u64; 3], u64)>,
    /// Largest point since the window opened.
    window_max: Option<ScanPoint>,
}

impl ClassMixScan {
    /// A scan against `reference` of suffixes from `min_events` to `max_events` long, each `ratio`
    /// times the previous (rounded up; `max_events` is always tested).
    pub fn new(reference: [u64; 3], min_events: usize, max_events: usize, ratio: f64) -> Self {
        let min_events = min_events.max(1);
        let max_events = max_events.max(min_events);
        let mut lengths = Vec::new();
        let mut length = min_events as f64;
        while (length.ceil() as usize) < max_events {
            let next = length.ceil() as usize;
            if lengths.last() != Some(&next) {
                lengths.push(next);
            }
            length *= ratio.max(1.01);
        }
        lengths.push(max_events);
        let suffix_counts = vec![[0; 3]; lengths.len()];
        Self {
            reference,
            lengths,
            recent: VecDeque::with_capacity(max_events + 1),
            suffix_counts,
            seen: 0,
            pending: VecDeque::new(),
            window_max: None,
        }
    }

    /// Adds the class counts of a window that closed ok to the reference, so that the reference of a
    /// stationary stream grows (a longer reference tells a mild shift from its own sampling noise).
    /// The counts wait until the window's last prediction is older than the longest suffix: a suffix
    /// and the reference never share predictions (two independent samples, as the test assumes, and a
    /// slow drift's early windows are not absorbed while they are still being tested). Beyond
    /// `max_events` the reference is scaled down to that total, keeping the mix.
    pub fn extend_reference(&mut self, counts: [u64; 3], max_events: u64) {
        self.pending.push_back((self.seen, counts, max_events));
        self.absorb_due();
    }

    fn absorb_due(&mut self) {
        let longest = *self.lengths.last().expect("at least one length") as u64;
        while let Some(&(closed_at, counts, max_events)) = self.pending.front() {
            if self.seen < closed_at + longest {
                break;
            }
            self.pending.pop_front();
            for (mine, theirs) in self.reference.iter_mut().zip(counts) {
                *mine += theirs;
            }
            let total: u64 = self.reference.iter().sum();
            if total > max_events && max_events > 0 {
                let scale = max_events as f64 / total as f64;
                for count in &mut self.reference {
                    *count = (*count as f64 * scale).round() as u64;
                }
            }
        }
    }

    /// The reference class counts the scan tests against.
    pub fn reference(&self) -> [u64; 3] {
        self.reference
    }

    /// The suffix lengths tested.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Adds one prediction of class `class` (0..3); returns the largest G over the suffixes that are
    /// full (none until the shortest is).
    pub fn observe(&mut self, class: usize) -> Option<ScanPoint> {
        let class = class.min(2);
        self.recent.push_back(class as u8);
        self.seen += 1;
        self.absorb_due();
        let held = self.recent.len();
        let longest = *self.lengths.last().expect("at least one length") as f64;
        let mut best: Option<ScanPoint> = None;
        for (length, counts) in self.lengths.iter().zip(self.suffix_counts.iter_mut()) {
            counts[class] += 1;
            if held > *length {
                // The prediction that just left this suffix.
                counts[usize::from(self.recent[held - 1 - length])] -= 1;
            }
            if held < *length {
                continue;
            }
            let Some(test) = g_test(&self.reference, counts) else {
                continue;
            };
            let score = test.statistic - 2.0 * (longest / *length as f64).ln();
            if best.is_none_or(|b| score > b.statistic) {
                best = Some(ScanPoint {
                    statistic: score,
                    g: test.statistic,
                    dof: test.dof,
                    suffix_events: *length,
                    suffix_counts: *counts,
                    reference_counts: self.reference,
                });
            }
        }
        if self.recent.len() > *self.lengths.last().expect("at least one length") {
            self.recent.pop_front();
        }
        if let Some(point) = best
            && self
                .window_max
                .is_none_or(|max| point.statistic > max.statistic)
        {
            self.window_max = Some(point);
        }
        best
    }

    /// The largest point since the window opened; starts the next window's maximum.
    pub fn take_window_max(&mut self) -> Option<ScanPoint> {
        self.window_max.take()
    }

    /// Forgets every prediction (after an alarm: the next alarm must rest on new evidence).
    pub fn restart(&mut self) {
        self.recent.clear();
        self.suffix_counts.iter_mut().for_each(|c| *c = [0; 3]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(reference: &[u64], window: &[u64]) -> f64 {
        g_test(reference, window).unwrap().statistic
    }

    #[test]
    fn g_test_edge_cases() {
        // scipy values are checked in tests/statistics.rs against the fixture file.
        assert!(g(&[1, 2, 3], &[2, 4, 6]).abs() < 1e-12);
        assert_eq!(g_test(&[0, 0, 0], &[1, 1, 1]), None);
        assert_eq!(g_test(&[5, 0, 5], &[1, 0, 1]).unwrap().dof, 1);
        // A class absent from one side contributes only through the other.
        assert!(g(&[10, 0, 10], &[0, 10, 10]) > 10.0);
    }

    #[test]
    fn suffix_lengths_grow_geometrically_and_include_the_longest() {
        let scan = ClassMixScan::new([1, 1, 1], 25, 400, 2.0);
        assert_eq!(scan.lengths(), &[25, 50, 100, 200, 400]);
        let scan = ClassMixScan::new([1, 1, 1], 30, 100, 1.5);
        assert_eq!(scan.lengths(), &[30, 45, 68, 100]);
    }

    #[test]
    fn the_reference_grows_with_ok_windows_once_they_leave_the_suffixes() {
        let mut scan = ClassMixScan::new([500, 300, 200], 30, 100, 2.0);
        for _ in 0..10 {
            scan.observe(0);
        }
        scan.extend_reference([250, 150, 100], 2_000);
        for _ in 0..99 {
            scan.observe(1);
        }
        assert_eq!(
            scan.reference(),
            [500, 300, 200],
            "still inside the longest suffix"
        );
        scan.observe(1);
        assert_eq!(scan.reference(), [750, 450, 300]);
        scan.extend_reference([1000, 0, 0], 2_000);
        scan.restart();
        for _ in 0..100 {
            scan.observe(2);
        }
        // 1750 / 450 / 300 of 2500, scaled to 2000.
        assert_eq!(scan.reference(), [1400, 360, 240]);
    }

    #[test]
    fn suffix_counts_follow_a_sliding_window() {
        let mut scan = ClassMixScan::new([100, 100, 100], 4, 8, 2.0);
        let classes = [0, 0, 1, 2, 2, 2, 2, 1, 0, 0, 0];
        let mut last = None;
        for (i, &c) in classes.iter().enumerate() {
            last = scan.observe(c);
            if i < 3 {
                assert!(last.is_none(), "no suffix is full yet");
            }
        }
        // Brute force over the last 4 and last 8 classes.
        let count = |tail: &[usize]| {
            let mut c = [0u64; 3];
            tail.iter().for_each(|&k| c[k] += 1);
            c
        };
        let four = count(&classes[classes.len() - 4..]);
        let eight = count(&classes[classes.len() - 8..]);
        // The 4-suffix pays 2 ln(8 / 4).
        let expected =
            (g(&[100, 100, 100], &four) - 2.0 * 2f64.ln()).max(g(&[100, 100, 100], &eight));
        assert!((last.unwrap().statistic - expected).abs() < 1e-12);
        assert_eq!(scan.suffix_counts, vec![four, eight]);
    }

    #[test]
    fn a_shift_raises_the_statistic_and_a_restart_forgets_it() {
        let reference = [420, 300, 280];
        let mut scan = ClassMixScan::new(reference, 25, 800, 1.5);
        // 21/15/14 of every 50, interleaved (37 is coprime with 50).
        let stationary = |i: usize| match (i * 37) % 50 {
            0..21 => 0,
            21..36 => 1,
            _ => 2,
        };
        let mut largest: f64 = 0.0;
        for i in 0..2_000 {
            if let Some(p) = scan.observe(stationary(i)) {
                largest = largest.max(p.statistic);
            }
        }
        assert!(largest < 1.0, "a mix equal to the reference: {largest}");
        assert!(scan.take_window_max().is_some());
        // Three in four predictions negative: far from 0.42.
        let mut alarm_after = None;
        for i in 0..400 {
            let p = scan.observe(if i % 4 == 3 { 2 } else { 0 });
            if p.is_some_and(|p| p.statistic >= 20.0) {
                alarm_after = Some(i + 1);
                break;
            }
        }
        let alarm_after = alarm_after.expect("the shift is found");
        assert!(alarm_after <= 80, "found after {alarm_after} predictions");
        let max = scan.take_window_max().unwrap();
        assert!(max.statistic >= 20.0 && max.nominal_p_value() < 1e-4);
        scan.restart();
        assert!(scan.observe(0).is_none(), "the suffixes start empty again");
    }
}
