//! A BERT encoder in Burn, inference only, with weights loaded from a Hugging Face `model.safetensors` by tensor
//! name: word + position + token-type embeddings and LayerNorm, then `num_hidden_layers` post-LayerNorm encoder
//! layers (12-head self-attention with an additive padding mask, GELU feed-forward), as `BertModel` computes them.
//! Sentence embeddings: mean over the real tokens, then L2 normalisation (sentence-transformers' `Pooling` +
//! `Normalize`).

use std::path::Path;

use burn::prelude::Backend;
use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The fields of `config.json` the encoder uses.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Longest position.
    pub max_position_embeddings: usize,
    /// Token types.
    pub type_vocab_size: usize,
    /// LayerNorm ε.
    pub layer_norm_eps: f64,
    /// Activation (only `gelu`, the exact erf form, is supported).
    pub hidden_act: String,
}

impl BertConfig {
    /// Read and check `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: Self = serde_json::from_str(&text).map_err(|e| Error::artifact(path, format!("not a BERT config: {e}")))?;
        if c.hidden_act != "gelu" {
            return Err(Error::artifact(path, format!("hidden_act {:?} is not supported (only \"gelu\")", c.hidden_act)));
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(Error::artifact(path, format!("hidden_size {} is not a multiple of num_attention_heads {}", c.hidden_size, c.num_attention_heads)));
        }
        Ok(c)
    }
}

struct Dense<B: Backend> {
    /// [in, out] (transposed from PyTorch's [out, in]).
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
}

impl<B: Backend> Dense<B> {
    /// x [n, in] -> [n, out].
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.weight.clone()) + self.bias.clone().unsqueeze_dim::<2>(0)
    }
}

struct LayerNorm<B: Backend> {
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Over the last axis of x [n, d].
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let mean = x.clone().mean_dim(1);
        let centered = x - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(1);
        let normed = centered / var.add_scalar(self.eps).sqrt();
        normed * self.gamma.clone().unsqueeze_dim::<2>(0) + self.beta.clone().unsqueeze_dim::<2>(0)
    }
}

struct Layer<B: Backend> {
    query: Dense<B>,
    key: Dense<B>,
    value: Dense<B>,
    attention_out: Dense<B>,
    attention_norm: LayerNorm<B>,
    intermediate: Dense<B>,
    output: Dense<B>,
    output_norm: LayerNorm<B>,
}

/// The encoder with its weights.
pub struct Bert<B: Backend> {
    config: BertConfig,
    word: Tensor<B, 2>,
    position: Tensor<B, 2>,
    token_type: Tensor<B, 2>,
    embedding_norm: LayerNorm<B>,
    layers: Vec<Layer<B>>,
}

/// Reads tensors by name from a safetensors file, checking dtype and shape.
struct Weights<'a, B: Backend> {
    file: safetensors::SafeTensors<'a>,
    path: &'a Path,
    device: &'a B::Device,
}

impl<B: Backend> Weights<'_, B> {
    fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let view = self.file.tensor(name).map_err(|_| Error::artifact(self.path, format!("tensor {name:?} is missing")))?;
        if view.shape() != shape {
            return Err(Error::artifact(self.path, format!("tensor {name:?} has shape {:?}, expected {shape:?}", view.shape())));
        }
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::artifact(self.path, format!("tensor {name:?} is {:?}, expected F32", view.dtype())));
        }
        let values: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(Tensor::from_data(TensorData::new(values, shape), self.device))
    }
    fn dense(&self, prefix: &str, input: usize, output: usize) -> Result<Dense<B>> {
        Ok(Dense { weight: self.tensor(&format!("{prefix}.weight"), [output, input])?.transpose(), bias: self.tensor(&format!("{prefix}.bias"), [output])? })
    }
    fn norm(&self, prefix: &str, width: usize, eps: f64) -> Result<LayerNorm<B>> {
        Ok(LayerNorm { gamma: self.tensor(&format!("{prefix}.weight"), [width])?, beta: self.tensor(&format!("{prefix}.bias"), [width])?, eps })
    }
}

/// erf(x) by Eigen's rational approximation on [-4, 4] (|error| < 5e-7 against libm in f32, see the test): plain multiply-adds
/// (no `mul_add`: without FMA in the target it is a slow library call) that the compiler vectorises, unlike the scalar libm call behind Burn's `erf`.
pub fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_600_1e-3;
    p = p * x2 + -1.609_603_3e-2;
    p *= x;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_474e-2;
    p / q
}

/// GELU with the exact (erf) form BERT uses: x·(1 + erf(x/√2))/2.
fn gelu_exact<B: Backend>(x: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
    let dims = x.dims();
    let device = x.device();
    let mut v = x.into_data().to_vec::<f32>().map_err(|e| Error::Features(format!("tensor readback: {e:?}")))?;
    v.iter_mut().for_each(|x| *x = 0.5 * *x * (1.0 + erf_fast(*x * std::f32::consts::FRAC_1_SQRT_2)));
    Ok(Tensor::from_data(TensorData::new(v, dims), &device))
}

impl<B: Backend> Bert<B> {
    /// Load the encoder from `model.safetensors` bytes. Errors name the file and any missing or mis-shaped tensor.
    /// Tensor names may carry a `bert.` prefix (as in `BertForX` checkpoints).
    pub fn from_safetensors(bytes: &[u8], path: &Path, config: BertConfig, device: &B::Device) -> Result<Self> {
        let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::artifact(path, format!("not a safetensors file: {e}")))?;
        let prefix = if file.names().iter().any(|n| n.starts_with("bert.")) { "bert." } else { "" };
        let w = Weights::<B> { file, path, device };
        let (h, ff, eps) = (config.hidden_size, config.intermediate_size, config.layer_norm_eps);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("{prefix}encoder.layer.{i}");
            layers.push(Layer {
                query: w.dense(&format!("{p}.attention.self.query"), h, h)?,
                key: w.dense(&format!("{p}.attention.self.key"), h, h)?,
                value: w.dense(&format!("{p}.attention.self.value"), h, h)?,
                attention_out: w.dense(&format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: w.dense(&format!("{p}.intermediate.dense"), h, ff)?,
                output: w.dense(&format!("{p}.output.dense"), ff, h)?,
                output_norm: w.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        Ok(Self {
            word: w.tensor(&format!("{prefix}embeddings.word_embeddings.weight"), [config.vocab_size, h])?,
            position: w.tensor(&format!("{prefix}embeddings.position_embeddings.weight"), [config.max_position_embeddings, h])?,
            token_type: w.tensor(&format!("{prefix}embeddings.token_type_embeddings.weight"), [config.type_vocab_size, h])?,
            embedding_norm: w.norm(&format!("{prefix}embeddings.LayerNorm"), h, eps)?,
            layers,
            config,
        })
    }

    /// Mean-pooled, L2-normalised sentence embeddings of a padded batch: `ids` and `mask` are `batch` rows of
    /// `len` tokens (mask 1 for real tokens, 0 for padding; token type 0 everywhere). Returns [batch, hidden].
    pub fn embed(&self, ids: &[u32], mask: &[u32], batch: usize, len: usize) -> Result<Tensor<B, 2>> {
        let c = &self.config;
        if ids.len() != batch * len || mask.len() != batch * len || len == 0 || len > c.max_position_embeddings {
            return Err(Error::Features(format!("bad batch: {} ids, {} mask values for {batch} x {len} (max length {})", ids.len(), mask.len(), c.max_position_embeddings)));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= c.vocab_size) {
            return Err(Error::Features(format!("token id {bad} is outside the vocabulary ({})", c.vocab_size)));
        }
        let device = self.word.device();
        let (h, heads) = (c.hidden_size, c.num_attention_heads);
        let head_dim = h / heads;
        let n = batch * len;
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [n]), &device);
        let positions: Vec<i64> = (0..batch).flat_map(|_| 0..len as i64).collect();
        let pos = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [n]), &device);
        let type0 = self.token_type.clone().slice([0..1, 0..h]);
        let mut x = self.word.clone().select(0, idx) + self.position.clone().select(0, pos) + type0;
        x = self.embedding_norm.forward(x);
        let mask_f: Vec<f32> = mask.iter().map(|&m| m as f32).collect();
        let mask_t = Tensor::<B, 2>::from_data(TensorData::new(mask_f, [batch, len]), &device);
        // Additive mask over keys: 0 for real tokens, a large negative number for padding.
        let additive = (mask_t.clone().neg().add_scalar(1.0) * -1e9f32).reshape([batch, 1, 1, len]);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let split = |t: Tensor<B, 2>| t.reshape([batch, len, heads, head_dim]).swap_dims(1, 2);
        for layer in &self.layers {
            let q = split(layer.query.forward(x.clone()));
            let k = split(layer.key.forward(x.clone()));
            let v = split(layer.value.forward(x.clone()));
            let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + additive.clone();
            let context = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([n, h]);
            x = layer.attention_norm.forward(layer.attention_out.forward(context) + x);
            let ff = layer.output.forward(gelu_exact(layer.intermediate.forward(x.clone()))?);
            x = layer.output_norm.forward(ff + x);
        }
        // Mean over real tokens, then L2 normalisation.
        let x = x.reshape([batch, len, h]);
        let m = mask_t.reshape([batch, len, 1]);
        let summed = (x * m.clone()).sum_dim(1).reshape([batch, h]);
        let counts = m.sum_dim(1).reshape([batch, 1]).clamp_min(1e-9);
        let mean = summed / counts;
        let norm = mean.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
        Ok(mean / norm)
    }
}
