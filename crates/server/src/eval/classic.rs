//! Classic programmable bootstraps: tfhe-rs's blind rotation after its centered binary modulus switch, one neuron
//! at a time per worker thread.

use rayon::prelude::*;
use tfhe::core_crypto::prelude::*;

use super::Evaluator;
use super::deadline::Deadline;

impl Evaluator {
    pub(super) fn classic_activations(&self, accumulators: &[u64], bsk: &FourierLweBootstrapKeyOwned, deadline: &Deadline) -> Vec<u64> {
        let p = self.params.tfhe();
        let (size, big) = (self.params.lwe_dimension() + 1, self.params.big_lwe_dimension() + 1);
        let log_modulus = p.polynomial_size.to_blind_rotation_input_modulus_log();
        let count = accumulators.len() / size;
        let mut out = vec![0u64; count * big];
        let scratch = || {
            let fft = Fft::new(p.polynomial_size);
            let mut buffers = ComputationBuffers::new();
            buffers.resize(
                blind_rotate_assign_mem_optimized_requirement::<u64>(p.glwe_dimension.to_glwe_size(), p.polynomial_size, fft.as_view())
                    .unaligned_bytes_required(),
            );
            (fft, buffers)
        };
        // One contiguous group of neurons per worker thread, so each thread sets up its scratch exactly once.
        let per = count.div_ceil(rayon::current_num_threads().max(1)).max(1);
        out.par_chunks_mut(per * big).zip(accumulators.par_chunks(per * size)).enumerate().for_each(|(g, (outs, accs))| {
            let (fft, mut buffers) = scratch();
            for (i, (o, a)) in outs.chunks_mut(big).zip(accs.chunks(size)).enumerate() {
                if deadline.check() {
                    return;
                }
                let input = LweCiphertext::from_container(a, p.ciphertext_modulus);
                let switched = lwe_ciphertext_centered_binary_modulus_switch::<u64, usize, _>(input, log_modulus);
                let mut lut = self.luts[(g * per + i) % self.program.neurons].clone();
                blind_rotate_assign_mem_optimized(&switched, &mut lut, bsk, fft.as_view(), buffers.stack());
                let mut output = LweCiphertext::from_container(o, p.ciphertext_modulus);
                extract_lwe_sample_from_glwe_ciphertext(&lut, &mut output, MonomialDegree(0));
            }
        });
        out
    }
}
