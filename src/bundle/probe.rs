//! Known-answer self-test (probes): every ONNX graph of a bundle is run once at open on a fixed input recorded in
//! the bundle, and its output is compared with the output recorded next to it.
//!
//! A checksum says the bytes are the ones the manifest names; it cannot say the graph computes what it computed
//! when the bundle was made (a file modified and its checksum rewritten, a graph the engine reads differently). The
//! probes can: a graph whose output on its probe differs from the recorded one by more than the tolerance is a
//! bundle error at open, naming the graph and the size of the difference.
//!
//! The format (`[probes]` of `bundle.toml`, a classic NetCDF file, `probes.nc` by default) is described in
//! `docs/bundle-format.md`. This module holds the probes as data (read and checked at bundle open) and the manifest
//! edit; running them needs the graphs, so the self-test and the writer (`latentda probes <bundle>`) live a layer up,
//! in `crate::model::selftest` (called by `Analyser::open` unless option `self_test = false`).

use std::path::Path;

use crate::bundle::{ncio, Bundle, ForecastSpace, ModelRole, StepRole};
use crate::error::{Error, Result};

/// Default file name of the probes.
pub const DEFAULT_FILE: &str = "probes.nc";

/// Default tolerance: largest relative L2 difference |y - y_ref| / |y_ref| between a graph's output on its probe
/// and the recorded output. The float32 graphs of the reference bundle, run by tract and by ONNX Runtime (CPU),
/// differ on their probes by 6e-6 (encoder, decoder) and 8e-5 (TL, AD: a perturbation through a deep conv net
/// loses more to float32 rounding); the kernels differ only in summation order, so other CPUs and thread counts
/// give differences of the same size. 1e-3 leaves a factor 12 over the largest, and a graph that changes its
/// output by less than 0.1 % would change no analysis visibly.
pub const DEFAULT_TOLERANCE: f64 = 1e-3;

/// Tolerance used instead when CUDA computes in TF32 (option `cuda_tf32`): TF32 rounds products to 10 mantissa bits
/// (about 5e-4 relative on a conv decoder), so the float32 tolerance would fail correct graphs.
pub const TF32_TOLERANCE: f64 = 1e-2;

/// Largest tolerance a manifest may declare: beyond it the test would no longer tell a corrupt graph.
pub const MAX_TOLERANCE: f64 = 0.1;

/// Seed of the probe inputs.
pub const SEED: u64 = 20_261_206;

/// One graph's probe: its inputs and its expected output.
#[derive(Debug, Clone)]
pub struct GraphProbe {
    /// Graph key: `encoder`, `decoder`, `decoder_tl`, `decoder_ad`, `step`, `step_tl` or `step_ad`.
    pub graph: String,
    /// Input tensors (name, values) in the graph's input order, batch 1.
    pub inputs: Vec<(String, Vec<f32>)>,
    /// Output tensor name and its expected values.
    pub output: (String, Vec<f32>),
}

/// The probes of a bundle (`[probes]` of the manifest), read and checked at open.
#[derive(Debug, Clone)]
pub struct Probes {
    /// File name in the bundle.
    pub file: String,
    /// Tolerance on the relative L2 difference of each output.
    pub tolerance: f64,
    /// One probe per graph that has one.
    pub graphs: Vec<GraphProbe>,
    /// Step-model graphs of the bundle without a probe in the file (a `[forecast]` table added after the probes
    /// were written): a warning at open, not an error.
    pub missing: Vec<String>,
}

/// Tensors of one graph: (name, length) of its inputs and of its output.
pub(crate) struct Spec {
    pub(crate) graph: &'static str,
    pub(crate) inputs: Vec<(&'static str, usize)>,
    pub(crate) output: (&'static str, usize),
    step: bool,
}

pub(crate) fn specs(bundle: &Bundle) -> Vec<Spec> {
    let nx = bundle.layout.state_len();
    let nz = bundle.latent_size();
    let ae = |graph, inputs, output| Spec { graph, inputs, output, step: false };
    let mut v = vec![
        ae("encoder", vec![("x", nx)], ("z", nz)),
        ae("decoder", vec![("z", nz)], ("x", nx)),
        ae("decoder_tl", vec![("z", nz), ("dz", nz)], ("dx", nx)),
        ae("decoder_ad", vec![("z", nz), ("dx", nx)], ("dz", nz)),
    ];
    if let Some(f) = &bundle.forecast {
        let (n, s, ds, ds_next, s_next) = match f.space {
            ForecastSpace::Latent => (nz, "z", "dz", "dz_next", "z_next"),
            ForecastSpace::Model => (nx, "x", "dx", "dx_next", "x_next"),
        };
        let st = |graph, inputs, output| Spec { graph, inputs, output, step: true };
        v.push(st("step", vec![(s, n)], (s_next, n)));
        v.push(st("step_tl", vec![(s, n), (ds, n)], (ds_next, n)));
        v.push(st("step_ad", vec![(s, n), (ds_next, n)], (ds, n)));
    }
    v
}

/// NetCDF variable of a tensor of a graph.
pub(crate) fn var_name(graph: &str, tensor: &str) -> String {
    format!("{graph}_{tensor}")
}

/// NetCDF dimension of a tensor of `len` values.
pub(crate) fn dim_name(bundle: &Bundle, len: usize) -> &'static str {
    if len == bundle.latent_size() && len != bundle.layout.state_len() {
        "latent"
    } else {
        "state"
    }
}

/// Reads the probes of `bundle` from `path` (already checksum-verified): every graph's tensors, finite float32
/// values. The autoencoder's four graphs must all be there; step-model graphs without a probe are listed in
/// [`Probes::missing`]. Their lengths are checked by `crate::model::selftest::self_test`, once the graphs' own
/// signatures have been checked against the manifest (a manifest that contradicts its graphs is reported as that,
/// not as stale probes).
pub(crate) fn read(bundle: &Bundle, path: &Path, file: &str, tolerance: f64) -> Result<Probes> {
    let names = ncio::var_names(path)?;
    let pd = path.display();
    let mut graphs = Vec::new();
    let mut missing = Vec::new();
    for s in specs(bundle) {
        let tensors: Vec<(&str, usize)> = s.inputs.iter().copied().chain(std::iter::once(s.output)).collect();
        let present: Vec<bool> = tensors.iter().map(|(t, _)| names.contains(&var_name(s.graph, t))).collect();
        if s.step && present.iter().all(|p| !p) {
            missing.push(s.graph.to_string());
            continue;
        }
        if let Some(k) = present.iter().position(|p| !p) {
            return Err(Error::bundle(format!(
                "{pd}: no variable '{}' (the probe of graph '{}'); rewrite the probes with `latentda probes {}`",
                var_name(s.graph, tensors[k].0),
                s.graph,
                bundle.dir.display()
            )));
        }
        let mut vals = Vec::new();
        for (t, _) in &tensors {
            let name = var_name(s.graph, t);
            let v = ncio::read_var(path, &name)?;
            if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !(x.is_finite() && x.abs() <= f32::MAX as f64)) {
                return Err(Error::bundle(format!(
                    "{pd}: variable '{name}' has {x} at index {i}; probes must be finite float32"
                )));
            }
            vals.push(((*t).to_string(), v.iter().map(|&x| x as f32).collect::<Vec<f32>>()));
        }
        let output = vals.pop().expect("an output");
        graphs.push(GraphProbe { graph: s.graph.to_string(), inputs: vals, output });
    }
    Ok(Probes { file: file.to_string(), tolerance, graphs, missing })
}

/// |got - want| / |want| (L2; the absolute difference when `want` is zero); NaN when `got` is not finite.
pub fn rel_diff(got: &[f32], want: &[f32]) -> f64 {
    let (mut d2, mut w2) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (*g as f64, *w as f64);
        d2 += (g - w) * (g - w);
        w2 += w * w;
    }
    if got.iter().any(|g| !g.is_finite()) {
        return f64::NAN;
    }
    if w2 > 0.0 {
        (d2 / w2).sqrt()
    } else {
        d2.sqrt()
    }
}
/// File name of a graph of the bundle.
pub(crate) fn graph_file<'a>(bundle: &'a Bundle, graph: &'a str) -> &'a str {
    let role = ModelRole::ALL.iter().find(|r| r.key() == graph);
    if let Some(r) = role {
        return bundle.model_file(*r);
    }
    let s = match graph {
        "step" => StepRole::Step,
        "step_tl" => StepRole::StepTl,
        _ => StepRole::StepAd,
    };
    bundle.forecast.as_ref().map_or(graph, |f| f.file(s))
}

/// `digest`; every other line unchanged. An existing `[probes]` table and checksum line are replaced; the table goes
/// just before `[checksums]`.
pub(crate) fn update_manifest(text: &str, file: &str, tolerance: f64, digest: &str) -> String {
    let header = |l: &str| -> Option<String> {
        let t = l.split('#').next().unwrap_or("").trim();
        (t.starts_with('[') && t.ends_with(']') && !t.contains(',')).then(|| t.to_string())
    };
    let is_key = |l: &str| {
        let t = l.trim_start();
        t.starts_with(&format!("\"{file}\"")) || t.starts_with(&format!("'{file}'"))
    };
    let mut out: Vec<String> = Vec::new();
    let mut section = String::new();
    let mut last_checksum = None;
    for l in text.lines() {
        if let Some(h) = header(l) {
            section = h;
            if section == "[probes]" {
                continue;
            }
        }
        if section == "[probes]" {
            continue;
        }
        if section == "[checksums]" && is_key(l) {
            continue;
        }
        if section == "[checksums]" && header(l).is_none() && l.contains('=') {
            last_checksum = Some(out.len());
        }
        if section == "[checksums]" && header(l).is_some() {
            // The new table goes before [checksums], after the blank line that ends the previous table.
            out.push("[probes]".into());
            out.push(format!("file = \"{file}\""));
            out.push(format!("tolerance = {tolerance:e}"));
            out.push(String::new());
            last_checksum = Some(out.len());
        }
        out.push(l.to_string());
    }
    let line = format!("\"{file}\" = \"{digest}\"");
    match last_checksum {
        Some(i) => out.insert(i + 1, line),
        None => out.push(line),
    }
    // Two blank lines in a row where the old table was removed.
    let mut text = String::new();
    let mut blank = false;
    for l in out {
        let b = l.trim().is_empty();
        if !(b && blank) {
            text.push_str(&l);
            text.push('\n');
        }
        blank = b;
    }
    text
}
#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "format = \"latentda-bundle\"\nformat_version = 1\n\n[latent]\nshape = [4]\n\n[checksums]\n\"a.onnx\" = \"aa\"\n\"b.nc\" = \"bb\"\n\n[provenance]\ncreated = \"x\"\n";

    #[test]
    fn manifest_update_inserts_and_replaces_probes() {
        let once = update_manifest(MANIFEST, "probes.nc", 1e-4, "cc");
        let t: toml::Table = toml::from_str(&once).unwrap();
        assert_eq!(t["probes"]["file"].as_str(), Some("probes.nc"));
        assert_eq!(t["probes"]["tolerance"].as_float(), Some(1e-4));
        assert_eq!(t["checksums"]["probes.nc"].as_str(), Some("cc"));
        assert_eq!(t["checksums"]["a.onnx"].as_str(), Some("aa"));
        assert_eq!(t["provenance"]["created"].as_str(), Some("x"));
        assert!(once.contains("\"b.nc\" = \"bb\"\n\"probes.nc\" = \"cc\"\n\n[provenance]"), "{once}");
        // A second write replaces the table and the checksum, leaving one of each; the same values give the same text.
        let twice = update_manifest(&once, "probes.nc", 1e-4, "dd");
        assert_eq!(twice.matches("[probes]").count(), 1, "{twice}");
        assert_eq!(twice.matches("\"probes.nc\" =").count(), 1, "{twice}");
        assert_eq!(update_manifest(&twice, "probes.nc", 1e-4, "cc"), once);
        // A table placed elsewhere by hand is moved, keeping the rest.
        let elsewhere = format!("{MANIFEST}\n[probes]\nfile = \"probes.nc\"\ntolerance = 2e-4\n");
        let t: toml::Table = toml::from_str(&update_manifest(&elsewhere, "probes.nc", 2e-4, "ee")).unwrap();
        assert_eq!(t["probes"]["tolerance"].as_float(), Some(2e-4));
        assert_eq!(t["checksums"]["probes.nc"].as_str(), Some("ee"));
    }

    #[test]
    fn relative_difference() {
        assert_eq!(rel_diff(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((rel_diff(&[3.0, 4.5], &[3.0, 4.0]) - 0.1).abs() < 1e-12);
        assert_eq!(rel_diff(&[0.5, 0.0], &[0.0, 0.0]), 0.5);
        assert!(rel_diff(&[f32::NAN, 4.0], &[3.0, 4.0]).is_nan());
        assert!(rel_diff(&[f32::INFINITY, 4.0], &[3.0, 4.0]).is_nan());
        assert!(!(rel_diff(&[f32::NAN], &[1.0]) <= DEFAULT_TOLERANCE));
    }
}
