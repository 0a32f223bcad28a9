//! The solver's two matrix-vector products, bit for bit what ndarray computes, several rows at a time.
//!
//! ndarray (without BLAS) multiplies a row-major matrix by a vector one row at a time, each row's dot product in
//! eight partial sums (`numeric_util::unrolled_dot`): every step of the loop adds to each of the eight sums once,
//! so the loop waits on the latency of one floating-point addition per eight elements, however wide the vector
//! unit is. [`mat_vec`] runs the same eight sums for four rows side by side: the same operations in the same order
//! for each row (so the same result to the last bit: neither fused multiply-adds nor reassociation, which Rust
//! never does on its own), with four times the independent additions in flight. On x86-64 with AVX2 (detected at
//! run time) each row's eight sums are two 4-wide registers; elsewhere the same sums run as plain code.

/// Rows handled together.
const ROWS: usize = 4;
/// Partial sums per row (ndarray's unrolling).
const LANES: usize = 8;

/// `out[i] = m[i]·x`, or `out[i] = out[i] + m[i]·x` with `accumulate`, for every row `m[i]` of the row-major
/// `m` (`out.len()` rows of `x.len()` columns), each dot product summed exactly as ndarray's `dot` sums it.
///
/// Panics if `m.len() != out.len() * x.len()` (the callers hold matrices of their own making).
pub(super) fn mat_vec(m: &[f64], x: &[f64], out: &mut [f64], accumulate: bool) {
    assert_eq!(m.len(), out.len() * x.len(), "matrix and vector shapes");
    let d = x.len();
    let row = |i: usize| &m[i * d..(i + 1) * d];
    let whole = out.len() - out.len() % ROWS;
    let store = |o: &mut f64, s: f64| *o = if accumulate { *o + s } else { s };
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    for i in (0..whole).step_by(ROWS) {
        let rows = std::array::from_fn(|r| row(i + r));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (checked above); every row is as long as `x`.
        let sums = if avx2 { unsafe { avx2::dots(rows, x) } } else { dots(rows, x) };
        #[cfg(not(target_arch = "x86_64"))]
        let sums = dots(rows, x);
        out[i..i + ROWS].iter_mut().zip(sums).for_each(|(o, s)| store(o, s));
    }
    for (i, o) in out.iter_mut().enumerate().skip(whole) {
        let [s] = dots([row(i)], x);
        store(o, s);
    }
}

/// The dot products of `R` rows with `x`, each as `numeric_util::unrolled_dot(row, x)` computes it: eight
/// partial sums over whole blocks of eight (`p[k] = p[k] + row[8b + k] * x[8b + k]`), combined as
/// `((((0 + (p0 + p4)) + (p1 + p5)) + (p2 + p6)) + (p3 + p7))`, then the remaining (fewer than eight) products
/// added one by one.
fn dots<const R: usize>(rows: [&[f64]; R], x: &[f64]) -> [f64; R] {
    let blocks = x.len() / LANES;
    let mut p = [[0.0f64; LANES]; R];
    for b in 0..blocks {
        for (r, row) in rows.iter().enumerate() {
            for k in 0..LANES {
                p[r][k] += row[b * LANES + k] * x[b * LANES + k];
            }
        }
    }
    std::array::from_fn(|r| finish(&p[r], rows[r], x))
}

/// A row's dot product from its eight partial sums, in ndarray's order (see [`dots`]).
fn finish(p: &[f64; LANES], row: &[f64], x: &[f64]) -> f64 {
    // Starting from 0 as ndarray does (0 + -0 is +0).
    let mut sum = 0.0f64;
    sum += p[0] + p[4];
    sum += p[1] + p[5];
    sum += p[2] + p[6];
    sum += p[3] + p[7];
    for i in x.len() / LANES * LANES..x.len() {
        sum += row[i] * x[i];
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m256d, _mm256_add_pd, _mm256_loadu_pd, _mm256_mul_pd, _mm256_setzero_pd, _mm256_storeu_pd};

    use super::{LANES, ROWS, finish};

    /// [`super::dots`] for [`ROWS`] rows, each row's eight partial sums held in two 4-wide registers (partial
    /// sums 0-3 and 4-7): the same multiplications and additions, lane by lane, so the same bits.
    ///
    /// # Safety
    /// The CPU must have AVX2, and every row must be at least as long as `x`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dots(rows: [&[f64]; ROWS], x: &[f64]) -> [f64; ROWS] {
        let blocks = x.len() / LANES;
        let mut lo: [__m256d; ROWS] = [_mm256_setzero_pd(); ROWS];
        let mut hi: [__m256d; ROWS] = [_mm256_setzero_pd(); ROWS];
        for b in 0..blocks {
            // SAFETY: b * 8 + 8 <= x.len() <= every row's length, and unaligned loads are allowed.
            unsafe {
                let xp = x.as_ptr().add(b * LANES);
                let (xl, xh) = (_mm256_loadu_pd(xp), _mm256_loadu_pd(xp.add(4)));
                for r in 0..ROWS {
                    let rp = rows[r].as_ptr().add(b * LANES);
                    lo[r] = _mm256_add_pd(lo[r], _mm256_mul_pd(_mm256_loadu_pd(rp), xl));
                    hi[r] = _mm256_add_pd(hi[r], _mm256_mul_pd(_mm256_loadu_pd(rp.add(4)), xh));
                }
            }
        }
        std::array::from_fn(|r| {
            let mut p = [0.0f64; LANES];
            // SAFETY: p holds eight f64s: four from `lo`, four from `hi`.
            unsafe {
                _mm256_storeu_pd(p.as_mut_ptr(), lo[r]);
                _mm256_storeu_pd(p.as_mut_ptr().add(4), hi[r]);
            }
            finish(&p, rows[r], x)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt as _, SeedableRng as _};

    /// Every shape near the block and group edges, values of mixed sign and scale (and signed zeros): the same bits
    /// as ndarray's matrix-vector product, with and without accumulation.
    #[test]
    fn equals_ndarray_to_the_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for n in [0usize, 1, 3, 4, 5, 8, 9, 13] {
            for d in [0usize, 1, 7, 8, 9, 15, 16, 17, 397] {
                let value = |rng: &mut rand_chacha::ChaCha8Rng| match rng.random_range(0..10) {
                    0 => 0.0,
                    1 => -0.0,
                    _ => rng.random_range(-1.0..1.0f64) * 10f64.powi(rng.random_range(-8..8)),
                };
                let m = ndarray::Array2::from_shape_fn((n, d), |_| value(&mut rng));
                let x = ndarray::Array1::from_shape_fn(d, |_| value(&mut rng));
                let start = ndarray::Array1::from_shape_fn(n, |_| value(&mut rng));
                let product = m.dot(&x);
                let mut got = vec![f64::NAN; n];
                mat_vec(m.as_slice().unwrap(), x.as_slice().unwrap(), &mut got, false);
                assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), product.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "n = {n}, d = {d}");
                let mut want = start.clone();
                ndarray::linalg::general_mat_vec_mul(1.0, &m, &x, 1.0, &mut want);
                let mut got = start.to_vec();
                mat_vec(m.as_slice().unwrap(), x.as_slice().unwrap(), &mut got, true);
                assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "n = {n}, d = {d}, accumulating");
                // The plain code path too (the one above took AVX2 where the CPU has it).
                for (i, rows) in m.as_slice().unwrap().chunks_exact(d.max(1)).collect::<Vec<_>>().chunks_exact(ROWS).enumerate() {
                    let sums = dots(std::array::from_fn::<&[f64], ROWS, _>(|r| rows[r]), x.as_slice().unwrap());
                    assert_eq!(sums.map(f64::to_bits), std::array::from_fn(|r| product[i * ROWS + r].to_bits()), "n = {n}, d = {d}, plain");
                }
            }
        }
    }
}
