//! Models: the ONNX execution backends (pure-Rust tract, ONNX Runtime on CPU or CUDA), the autoencoder's four
//! graphs (encoder, decoder, decoder TL, decoder AD) and the step models of latent 4D-Var.

pub mod autoencoder;
pub mod backend;
pub mod forecast;
