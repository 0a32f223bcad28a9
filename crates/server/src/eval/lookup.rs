//! The lookup tables: one trivially encrypted GLWE accumulator per neuron, whose blind rotation by the encrypted
//! index returns the neuron's table entry.

use tfhe::core_crypto::prelude::*;

use crate::params::ParameterSet;

/// The accumulator polynomial of a bootstrap that returns `table[r] * delta` for index r (and the negacyclic
/// `-table[r] * delta` past the padding bit). As tfhe-rs's `generate_programmable_bootstrap_glwe_lut`, but with
/// signed table entries and wrapping arithmetic.
///
/// The body's coefficient `r * N / table.len()` is `table[r] * delta`: a blind rotation by `r * N / table.len()`
/// (plus up to half a box of noise either way) brings it to the constant term. The mask is zero (a trivial
/// encryption: the table is the server's, not a secret of the client's).
///
/// ```
/// use cryptotl_server::ParameterSet;
/// use cryptotl_server::eval::lookup::lookup_table_glwe;
/// let params = ParameterSet::default();
/// let n = params.polynomial_size();
/// let table = [3, -1, 0, 2];
/// let delta = 1u64 << 60;
/// let acc = lookup_table_glwe(params, &table, delta);
/// let body = acc.get_body();
/// let body = body.as_ref();
/// let step = n / table.len();
/// for (r, &v) in table.iter().enumerate() {
///     assert_eq!(body[r * step], (v as i64 as u64).wrapping_mul(delta));
/// }
/// // The last half box wraps around negacyclically to the first entry, negated.
/// assert_eq!(body[n - 1], (3u64 * delta).wrapping_neg());
/// ```
pub fn lookup_table_glwe(params: ParameterSet, table: &[i32], delta: u64) -> GlweCiphertextOwned<u64> {
    let p = params.tfhe();
    let n = p.polynomial_size.0;
    let box_size = n / table.len();
    let mut acc: Vec<u64> = table.iter().flat_map(|&v| std::iter::repeat_n((v as i64 as u64).wrapping_mul(delta), box_size)).collect();
    let half_box = box_size / 2;
    for a in &mut acc[..half_box] {
        *a = a.wrapping_neg();
    }
    acc.rotate_left(half_box);
    allocate_and_trivially_encrypt_new_glwe_ciphertext(p.glwe_dimension.to_glwe_size(), &PlaintextList::from_container(acc), p.ciphertext_modulus)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole box of every entry holds it (so noise up to half a box either way still reads the entry), the first
    /// half box of entry 0 sits negated at the top, and the mask is zero.
    #[test]
    fn every_box_holds_its_entry() {
        for params in ParameterSet::ALL {
            let n = params.polynomial_size();
            let table: Vec<i32> = (0..8).map(|k| 3 * k - 7).collect();
            let delta = 1u64 << 59;
            let acc = lookup_table_glwe(params, &table, delta);
            let body = acc.get_body();
            let body = body.as_ref();
            let (step, half) = (n / table.len(), n / table.len() / 2);
            for (i, &c) in body.iter().enumerate() {
                // Coefficient i reads the entry whose box (centred on r * step) contains it.
                let r = (i + half) / step;
                let want = if r < table.len() { (table[r] as i64 as u64).wrapping_mul(delta) } else { (table[0] as i64 as u64).wrapping_mul(delta).wrapping_neg() };
                assert_eq!(c, want, "{}: coefficient {i}", params.name());
            }
            assert!(acc.get_mask().as_ref().iter().all(|&m| m == 0));
        }
    }
}
