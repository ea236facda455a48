//! The statistics behind the drift signals, written out (no statistics crate): chi-square test of
//! homogeneity with Cramér's V, PSI, Jensen-Shannon distance, two-sample Kolmogorov-Smirnov, entropy,
//! macro-F1 and per-class recall. `tests/fixtures/statistics.json` holds scipy/sklearn values for each.

/// Result of a chi-square test of homogeneity between two count vectors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChiSquare {
    /// Pearson's chi-square statistic (no continuity correction).
    pub statistic: f64,
    /// Degrees of freedom: categories seen in either vector, minus one.
    pub dof: u32,
    /// Probability of a statistic at least this large under homogeneity.
    pub p_value: f64,
    /// Cramér's V of the 2×k table, the effect size in [0, 1] (sample-size free).
    pub cramers_v: f64,
}

/// Chi-square test of homogeneity of `reference` and `window` counts (a 2×k contingency table);
/// categories empty in both are dropped. None when either side is empty or fewer than two categories
/// remain.
pub fn chi_square_homogeneity(reference: &[u64], window: &[u64]) -> Option<ChiSquare> {
    let columns: Vec<(f64, f64)> = reference
        .iter()
        .zip(window)
        .filter(|(r, w)| **r + **w > 0)
        .map(|(r, w)| (*r as f64, *w as f64))
        .collect();
    let rows = [
        columns.iter().map(|c| c.0).sum::<f64>(),
        columns.iter().map(|c| c.1).sum::<f64>(),
    ];
    if columns.len() < 2 || rows[0] == 0.0 || rows[1] == 0.0 {
        return None;
    }
    let total = rows[0] + rows[1];
    let mut statistic = 0.0;
    for (r, w) in &columns {
        let column = r + w;
        for (observed, row) in [(*r, rows[0]), (*w, rows[1])] {
            let expected = row * column / total;
            statistic += (observed - expected).powi(2) / expected;
        }
    }
    let dof = (columns.len() - 1) as u32;
    Some(ChiSquare {
        statistic,
        dof,
        p_value: chi2_sf(statistic, f64::from(dof)),
        cramers_v: (statistic / total).sqrt().min(1.0),
    })
}

/// Population stability index of `window` against `reference` counts, with proportions floored at
/// `epsilon` so an empty class gives a large but finite value.
pub fn psi(reference: &[u64], window: &[u64], epsilon: f64) -> Option<f64> {
    let r = proportions(reference)?;
    let w = proportions(window)?;
    Some(
        r.iter()
            .zip(&w)
            .map(|(r, w)| {
                let (r, w) = (r.max(epsilon), w.max(epsilon));
                (w - r) * (w / r).ln()
            })
            .sum(),
    )
}

/// Jensen-Shannon distance (square root of the divergence) in base 2, so in [0, 1].
pub fn jensen_shannon_distance(reference: &[u64], window: &[u64]) -> Option<f64> {
    let p = proportions(reference)?;
    let q = proportions(window)?;
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter()
            .zip(m)
            .filter(|(a, _)| **a > 0.0)
            .map(|(a, m)| a * (a / m).ln())
            .sum()
    };
    let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a + b) / 2.0).collect();
    let divergence = (kl(&p, &m) + kl(&q, &m)) / 2.0 / std::f64::consts::LN_2;
    Some(divergence.max(0.0).sqrt())
}

/// Counts as proportions; None when they sum to zero.
fn proportions(counts: &[u64]) -> Option<Vec<f64>> {
    let total: u64 = counts.iter().sum();
    (total > 0).then(|| counts.iter().map(|c| *c as f64 / total as f64).collect())
}

/// Result of a two-sample Kolmogorov-Smirnov test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KolmogorovSmirnov {
    /// Largest distance between the two empirical CDFs, in [0, 1] (the effect size).
    pub statistic: f64,
    /// Two-sided p-value from Kolmogorov's limiting distribution with Stephens' small-sample
    /// correction: `Q_KS((√n + 0.12 + 0.11/√n)·D)` with `n = n₁n₂/(n₁+n₂)`.
    pub p_value: f64,
}

/// Two-sample KS test (two-sided). None when either sample is empty. NaNs must be filtered first.
pub fn ks_two_sample(a: &[f64], b: &[f64]) -> Option<KolmogorovSmirnov> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (n1, n2) = (a.len(), b.len());
    let (mut i, mut j) = (0, 0);
    let mut d: f64 = 0.0;
    // Walk both sorted samples; ties advance together so the CDFs are compared at every value.
    while i < n1 && j < n2 {
        let x = a[i].min(b[j]);
        while i < n1 && a[i] <= x {
            i += 1;
        }
        while j < n2 && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n1 as f64 - j as f64 / n2 as f64).abs());
    }
    let en = ((n1 * n2) as f64 / (n1 + n2) as f64).sqrt();
    Some(KolmogorovSmirnov {
        statistic: d,
        p_value: kolmogorov_sf((en + 0.12 + 0.11 / en) * d),
    })
}

/// Survival function of Kolmogorov's distribution, `P(K > λ)` (scipy's `special.kolmogorov`).
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 1.0 {
        // CDF by the Jacobi theta form, accurate where the alternating series converges slowly.
        let factor = (2.0 * std::f64::consts::PI).sqrt() / lambda;
        let mut cdf = 0.0;
        for k in 1..=20 {
            let odd = f64::from(2 * k - 1);
            cdf += (-(odd * odd) * std::f64::consts::PI.powi(2) / (8.0 * lambda * lambda)).exp();
        }
        return (1.0 - factor * cdf).clamp(0.0, 1.0);
    }
    let mut sum = 0.0;
    for j in 1..=100 {
        let j = f64::from(j);
        let term = (-2.0 * j * j * lambda * lambda).exp();
        sum += if j as u32 % 2 == 1 { term } else { -term };
        if term < 1e-17 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// Survival function of the chi-square distribution with `dof` degrees of freedom.
pub fn chi2_sf(x: f64, dof: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(dof / 2.0, x / 2.0)
}

/// Regularised upper incomplete gamma `Q(a, x)` (series below `a + 1`, continued fraction above).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x < a + 1.0 {
        let mut term = 1.0 / a;
        let mut sum = term;
        let mut n = a;
        for _ in 0..1000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        (1.0 - sum * (-x + a * x.ln() - ln_gamma(a)).exp()).clamp(0.0, 1.0)
    } else {
        // Lentz's method for the continued fraction.
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -f64::from(i) * (f64::from(i) - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        ((-x + a * x.ln() - ln_gamma(a)).exp() * h).clamp(0.0, 1.0)
    }
}

/// `ln Γ(x)` for x > 0 (Lanczos, g = 7, n = 9; ~15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the approximation in its accurate range.
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEFFICIENTS[0];
    for (i, c) in COEFFICIENTS.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// Shannon entropy in nats of a probability vector (zeros contribute nothing).
pub fn entropy(p: &[f64]) -> f64 {
    let total: f64 = p.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    -p.iter()
        .filter(|x| **x > 0.0)
        .map(|x| {
            let x = x / total;
            x * x.ln()
        })
        .sum::<f64>()
}

/// Macro-F1 and per-class recall of `(predicted, truth)` class-index pairs over `classes` classes;
/// a class with no support and no prediction scores 0 (sklearn's `zero_division=0`).
pub fn classification_scores(pairs: &[(usize, usize)], classes: usize) -> (f64, Vec<f64>) {
    let mut true_positive = vec![0u64; classes];
    let mut predicted = vec![0u64; classes];
    let mut support = vec![0u64; classes];
    for &(p, t) in pairs {
        if p >= classes || t >= classes {
            continue;
        }
        predicted[p] += 1;
        support[t] += 1;
        if p == t {
            true_positive[p] += 1;
        }
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let recall: Vec<f64> = (0..classes)
        .map(|c| ratio(true_positive[c], support[c]))
        .collect();
    let f1_sum: f64 = (0..classes)
        .map(|c| {
            let denominator = predicted[c] + support[c];
            ratio(2 * true_positive[c], denominator)
        })
        .sum();
    (f1_sum / classes as f64, recall)
}

/// Arithmetic mean; None for an empty slice.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_samples_show_no_difference() {
        let counts = [10, 20, 30];
        let chi = chi_square_homogeneity(&counts, &counts).unwrap();
        assert_eq!(chi.statistic, 0.0);
        assert!((chi.p_value - 1.0).abs() < 1e-12);
        assert_eq!(psi(&counts, &counts, 1e-4), Some(0.0));
        assert!(jensen_shannon_distance(&counts, &counts).unwrap() < 1e-9);
        let ks = ks_two_sample(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap();
        assert_eq!(ks.statistic, 0.0);
        assert_eq!(ks.p_value, 1.0);
    }

    #[test]
    fn empty_inputs_give_none() {
        assert!(chi_square_homogeneity(&[0, 0, 0], &[1, 2, 3]).is_none());
        assert!(chi_square_homogeneity(&[5, 0, 0], &[3, 0, 0]).is_none());
        assert!(psi(&[0], &[0], 1e-4).is_none());
        assert!(ks_two_sample(&[], &[1.0]).is_none());
        assert_eq!(mean(&[]), None);
    }
}
