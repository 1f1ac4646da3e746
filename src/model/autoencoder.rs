//! The bundle's autoencoder: encoder, decoder and the decoder's tangent-linear and adjoint graphs.
//!
//! All four work on normalised fields `xn = (x - mean) / std` and in float32, batch 1.

use std::time::Instant;

use crate::bundle::{Bundle, ModelRole};
use crate::error::Result;
use crate::model::backend::{ensure_backend, BackendInfo, ExecOptions, OnnxModel, TensorSpec};
use crate::model::scale::ChannelScale;

/// Wall time and call counts of model runs, reset per analysis.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelTimings {
    /// Seconds in the encoder.
    pub encode_s: f64,
    /// Seconds in the decoder.
    pub decode_s: f64,
    /// Seconds in the tangent-linear decoder.
    pub tl_s: f64,
    /// Seconds in the adjoint decoder.
    pub ad_s: f64,
    /// Number of encoder runs.
    pub n_encode: usize,
    /// Number of decoder runs.
    pub n_decode: usize,
    /// Number of TL runs.
    pub n_tl: usize,
    /// Number of AD runs.
    pub n_ad: usize,
}

impl ModelTimings {
    /// Total seconds in model runs.
    pub fn total_s(&self) -> f64 {
        self.encode_s + self.decode_s + self.tl_s + self.ad_s
    }
}

/// The four ONNX sessions of a bundle, created once and reused.
#[derive(Debug)]
pub struct Autoencoder {
    encoder: OnnxModel,
    decoder: OnnxModel,
    tl: OnnxModel,
    ad: OnnxModel,
    /// State size (channels x lat x lon).
    pub state_len: usize,
    /// Latent size.
    pub latent_len: usize,
    /// Timings since the last reset.
    pub timings: ModelTimings,
    /// Backend actually in use.
    pub info: BackendInfo,
}

impl Autoencoder {
    /// Loads the four graphs of `bundle` (checksums re-verified on the bytes actually loaded) and checks their
    /// signatures against the manifest.
    pub fn load(bundle: &Bundle, opts: &ExecOptions) -> Result<Autoencoder> {
        let info = ensure_backend(opts)?;
        let lay = &bundle.layout;
        let xdims = vec![1, lay.nchan as i64, lay.grid.nlat() as i64, lay.grid.nlon() as i64];
        let zdims: Vec<i64> = std::iter::once(1).chain(bundle.latent_shape.iter().map(|&d| d as i64)).collect();
        let spec = |name, dims: &Vec<i64>| TensorSpec { name, dims: dims.clone() };
        let load = |role: ModelRole, inputs: Vec<TensorSpec>, output: TensorSpec| -> Result<OnnxModel> {
            let file = bundle.model_file(role).to_string();
            let bytes = bundle.model_bytes(role)?;
            OnnxModel::new(&file, &bytes, opts, inputs, output)
        };
        let encoder = load(ModelRole::Encoder, vec![spec("x", &xdims)], spec("z", &zdims))?;
        let decoder = load(ModelRole::Decoder, vec![spec("z", &zdims)], spec("x", &xdims))?;
        let tl = load(ModelRole::DecoderTl, vec![spec("z", &zdims), spec("dz", &zdims)], spec("dx", &xdims))?;
        let ad = load(ModelRole::DecoderAd, vec![spec("z", &zdims), spec("dx", &xdims)], spec("dz", &zdims))?;
        Ok(Autoencoder {
            encoder,
            decoder,
            tl,
            ad,
            state_len: lay.state_len(),
            latent_len: bundle.latent_size(),
            timings: ModelTimings::default(),
            info,
        })
    }

    /// z = E(xn).
    pub fn encode(&mut self, xn: &[f32], z: &mut [f32]) -> Result<()> {
        let t = Instant::now();
        self.encoder.run(&[xn], z)?;
        self.timings.encode_s += t.elapsed().as_secs_f64();
        self.timings.n_encode += 1;
        Ok(())
    }

    /// xn = D(z).
    pub fn decode(&mut self, z: &[f32], xn: &mut [f32]) -> Result<()> {
        let t = Instant::now();
        self.decoder.run(&[z], xn)?;
        self.timings.decode_s += t.elapsed().as_secs_f64();
        self.timings.n_decode += 1;
        Ok(())
    }

    /// dxn = D'(z) dz.
    pub fn tl(&mut self, z: &[f32], dz: &[f32], dxn: &mut [f32]) -> Result<()> {
        let t = Instant::now();
        self.tl.run(&[z, dz], dxn)?;
        self.timings.tl_s += t.elapsed().as_secs_f64();
        self.timings.n_tl += 1;
        Ok(())
    }

    /// dz = D'(z)^T dxn.
    pub fn ad(&mut self, z: &[f32], dxn: &[f32], dz: &mut [f32]) -> Result<()> {
        let t = Instant::now();
        self.ad.run(&[z, dxn], dz)?;
        self.timings.ad_s += t.elapsed().as_secs_f64();
        self.timings.n_ad += 1;
        Ok(())
    }
}

/// z = E(N(x)) for a state x in physical units (`mean`, `sd` per channel, `npoints` points each).
pub fn encode_state(ae: &mut Autoencoder, x: &[f64], mean: &[f64], sd: &[f64], npoints: usize) -> Result<Vec<f32>> {
    let mut xn = vec![0f32; ae.state_len];
    ChannelScale::new(mean, sd, npoints).normalise_to_f32(x, &mut xn);
    let mut z = vec![0f32; ae.latent_len];
    ae.encode(&xn, &mut z)?;
    Ok(z)
}

/// x = mean\[c\] + sd\[c\] * xn ([`ChannelScale::denormalise_from_f32`]).
pub fn denormalise(xn: &[f32], mean: &[f64], sd: &[f64], npoints: usize, x: &mut [f64]) {
    ChannelScale::new(mean, sd, npoints).denormalise_from_f32(xn, x);
}
