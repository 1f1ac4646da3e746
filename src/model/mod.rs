//! Models: the ONNX execution backends (pure-Rust tract, ONNX Runtime on CPU or CUDA), the autoencoder's four
//! graphs (encoder, decoder, decoder TL, decoder AD), the step models of latent 4D-Var, and the known-answer
//! self-test that runs them on the bundle's probes, and the per-channel normalisation they all share.

pub mod autoencoder;
pub mod backend;
pub mod forecast;
pub mod scale;
pub mod selftest;
