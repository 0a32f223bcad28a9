//! The lookup tables: one trivially encrypted GLWE accumulator per neuron, whose blind rotation by the encrypted
//! index returns the neuron's table entry.

use tfhe::core_crypto::prelude::*;

use crate::params::ParameterSet;

/// The accumulator polynomial of a bootstrap that returns `table[r] * delta` for index r (and the negacyclic
/// `-table[r] * delta` past the padding bit). As tfhe-rs's `generate_programmable_bootstrap_glwe_lut`, but with
/// signed table entries and wrapping arithmetic.
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
