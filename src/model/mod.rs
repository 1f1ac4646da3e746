//! Models: the ONNX execution backends (pure-Rust tract, ONNX Runtime on CPU or CUDA) and the autoencoder's four
//! graphs (encoder, decoder, decoder TL, decoder AD).

pub mod autoencoder;
pub mod backend;
