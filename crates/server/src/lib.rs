//! # cryptotl-server: the model owner's side of cryptotl
//!
//! The server holds a frozen, quantized lower network (an [`IntegerProgram`]) and a client's public
//! [`EvaluationKey`]. It evaluates the program on the client's [`EncryptedInput`]s and returns
//! [`EncryptedOutput`]s, never seeing a feature or an activation in the clear.
//!
//! **This crate cannot name a secret key.** The client's key types live in the `cryptotl` crate (module
//! `cryptotl::he::client`), and this crate does not depend on `cryptotl`: Cargo forbids the cycle, so no code
//! here can hold, take or return client key material. That is a compile-time fact, checked by a test that reads
//! this crate's manifest.
//!
//! Layout (after tfhe-rs `core_crypto`: entities apart from algorithms):
//! - [`params`]: the vetted tfhe-rs parameter sets on offer, by name.
//! - [`program`]: the integer program (folded linear stage, lookup tables, pooling) and its clear-integer
//!   evaluator, the oracle for the encrypted one.
//! - [`wire`]: keys and ciphertexts as they cross the wire, with tfhe's versioned safe serialization.
//! - [`eval`]: the homomorphic evaluation (tight integer loop over ciphertext data, one bootstrap per neuron,
//!   classic or multi-bit).
//!
//! The deployed service (`cryptotl serve`):
//! - [`artifact`]: the model directory the server keeps (program, public interface, privacy statement, manifest).
//! - [`frames`]: batches of wire objects in one body.
//! - [`auth`]: bearer tokens, stored hashed, compared in constant time.
//! - [`keystore`]: clients' evaluation keys, content-addressed, bound to their uploader, LRU-bounded, on disk.
//! - [`service`]: the transport-independent service (upload a key, evaluate a batch), every input checked.
//! - [`http`]: the service over HTTP/TLS, with a bounded queue, metrics and request logs.

pub mod artifact;
pub mod atomic;
pub mod auth;
pub mod error;
pub mod eval;
pub mod frames;
pub mod http;
pub mod keystore;
pub mod params;
pub mod program;
pub mod service;
pub mod wire;

pub use artifact::{ModelArtifact, ModelInterface};
pub use service::{Service, ServiceError};

pub use error::{HeError, Result};
pub use eval::{Evaluator, OpCounts};
pub use params::{ParameterSet, TfheParameters};
pub use program::{IntegerProgram, ProgramInterface};
pub use wire::{EncryptedInput, EncryptedOutput, EvaluationKey, RoundedEvaluationKey, SeededBootstrapKey};
