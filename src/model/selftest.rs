//! Running the known-answer probes of a bundle (`crate::bundle::probe`): the self-test at open and the writer of
//! the probes (`latentda probes <bundle>`). Both need the loaded graphs, so they live in the model layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::bundle::probe::{
    dim_name, graph_file, rel_diff, specs, update_manifest, var_name, GraphProbe, DEFAULT_FILE, DEFAULT_TOLERANCE,
    SEED, TF32_TOLERANCE,
};
use crate::bundle::{ncio, Bundle, ForecastSpace};
use crate::error::{Error, Result};
use crate::model::autoencoder::Autoencoder;
use crate::model::backend::{Device, ExecOptions};
use crate::model::forecast::{OnnxStep, StepModel};
use crate::numeric::Rng;

/// Amplitude of the encoder probe's smooth normalised fields (per channel, about 0.7 standard deviations).
const SMOOTH_AMPLITUDE: f64 = 0.5;
/// Amplitude of the white noise added to them.
const WHITE_AMPLITUDE: f64 = 0.1;

/// Result of the self-test at open (shown by `latentda info` and in the analysis report).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SelfTest {
    /// `passed`, `off` (option `self_test = false`) or `no probes` (the bundle has none).
    pub status: String,
    /// Seconds spent running the graphs on their probes and comparing.
    pub seconds: f64,
    /// Tolerance applied (relative L2 difference).
    pub tolerance: f64,
    /// Relative L2 difference of each graph tested.
    pub graphs: BTreeMap<String, f64>,
    /// Graphs not tested and why.
    pub warnings: Vec<String>,
}

impl SelfTest {
    /// The largest difference and its graph.
    pub fn worst(&self) -> Option<(&str, f64)> {
        self.graphs.iter().map(|(g, d)| (g.as_str(), *d)).fold(None, |m, (g, d)| match m {
            Some((_, dm)) if dm >= d => m,
            _ => Some((g, d)),
        })
    }

    /// One line for `latentda info` and logs.
    pub fn summary(&self) -> String {
        match self.status.as_str() {
            "passed" => {
                let worst = self.worst().map_or(String::new(), |(g, d)| format!(", largest difference {d:.1e} ({g})"));
                let warn = if self.warnings.is_empty() {
                    String::new()
                } else {
                    format!("; WARNING: {}", self.warnings.join("; "))
                };
                format!(
                    "passed: {} graphs on their probes in {:.1} ms (tolerance {:.0e} relative{worst}){warn}",
                    self.graphs.len(),
                    1e3 * self.seconds,
                    self.tolerance
                )
            }
            "off" => "off (option self_test = false)".into(),
            _ => format!("WARNING: {}", self.warnings.join("; ")),
        }
    }
}

/// Runs graph `graph` of the autoencoder or step model on `inputs`, writing its output to `out`.
fn run_graph(
    graph: &str,
    inputs: &[&[f32]],
    ae: &mut Autoencoder,
    step: Option<&mut OnnxStep>,
    out: &mut [f32],
) -> Result<()> {
    match graph {
        "encoder" => ae.encode(inputs[0], out),
        "decoder" => ae.decode(inputs[0], out),
        "decoder_tl" => ae.tl(inputs[0], inputs[1], out),
        "decoder_ad" => ae.ad(inputs[0], inputs[1], out),
        "step" | "step_tl" | "step_ad" => {
            let st =
                step.ok_or_else(|| Error::bundle(format!("graph '{graph}' probed, but the step model is not loaded")))?;
            let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
            let mut o = vec![0.0f64; out.len()];
            match graph {
                "step" => st.step(&f(inputs[0]), &mut o)?,
                "step_tl" => st.tl(&f(inputs[0]), &f(inputs[1]), &mut o)?,
                _ => st.ad(&f(inputs[0]), &f(inputs[1]), &mut o)?,
            }
            out.iter_mut().zip(&o).for_each(|(a, b)| *a = *b as f32);
            Ok(())
        }
        g => Err(Error::bundle(format!("unknown graph '{g}' in the probes"))),
    }
}

/// The tolerance in force for the backend options: the bundle's, raised to [`TF32_TOLERANCE`] when CUDA computes in
/// TF32.
pub fn tolerance_for(declared: f64, exec: &ExecOptions) -> f64 {
    if exec.cuda_tf32 && matches!(exec.device, Device::Cuda(_)) {
        declared.max(TF32_TOLERANCE)
    } else {
        declared
    }
}

/// The known-answer self-test: runs every probed graph once on its probe and compares its output with the recorded
/// one. A difference above the tolerance (or a non-finite output) is a bundle error naming the graph, its file and
/// the difference. `enabled = false` (option `self_test`) skips it; a bundle without probes passes with a warning
/// (bundles written before the probes existed keep opening).
pub fn self_test(
    bundle: &Bundle,
    ae: &mut Autoencoder,
    mut step: Option<&mut OnnxStep>,
    enabled: bool,
    exec: &ExecOptions,
) -> Result<SelfTest> {
    if !enabled {
        return Ok(SelfTest { status: "off".into(), ..Default::default() });
    }
    let Some(p) = &bundle.probes else {
        return Ok(SelfTest {
            status: "no probes".into(),
            warnings: vec![format!(
                "bundle '{}' has no probes: its graphs were not checked against known answers at open (write them \
                 with `latentda probes {}`)",
                bundle.name,
                bundle.dir.display()
            )],
            ..Default::default()
        });
    };
    let t = Instant::now();
    let tol = tolerance_for(p.tolerance, exec);
    let mut graphs = BTreeMap::new();
    let specs = specs(bundle);
    for g in &p.graphs {
        let spec = specs.iter().find(|s| s.graph == g.graph).expect("probes are read for the bundle's graphs");
        let tensors = g.inputs.iter().chain(std::iter::once(&g.output));
        for ((name, v), (_, n)) in tensors.zip(spec.inputs.iter().chain(std::iter::once(&spec.output))) {
            if v.len() != *n {
                return Err(Error::bundle(format!(
                    "{}: variable '{}' has {} values, but tensor '{name}' of graph '{}' has {n}: the probes were written \
                     for another manifest (rewrite them with `latentda probes {}`)",
                    p.file,
                    var_name(&g.graph, name),
                    v.len(),
                    g.graph,
                    bundle.dir.display()
                )));
            }
        }
        let inputs: Vec<&[f32]> = g.inputs.iter().map(|(_, v)| v.as_slice()).collect();
        let mut out = vec![0f32; g.output.1.len()];
        let file = graph_file(bundle, &g.graph);
        run_graph(&g.graph, &inputs, ae, step.as_deref_mut(), &mut out).map_err(|e| {
            Error::bundle(format!(
                "known-answer self-test: graph '{}' ({file}) fails on its probe: {}",
                g.graph, e.message
            ))
        })?;
        let d = rel_diff(&out, &g.output.1);
        if !(d <= tol) {
            let what = if d.is_nan() {
                "a non-finite value".to_string()
            } else {
                format!("a relative L2 difference of {d:.3e} (tolerance {tol:.0e})")
            };
            return Err(Error::bundle(format!(
                "known-answer self-test failed: graph '{}' ({file}) gives output '{}' with {what} from the answer \
                 recorded in {}: the graph is corrupt or not the one the probes were written for (bundle {})",
                g.graph,
                g.output.0,
                p.file,
                bundle.dir.display()
            )));
        }
        graphs.insert(g.graph.clone(), d);
    }
    let warnings = p
        .missing
        .iter()
        .map(|g| {
            format!(
                "graph '{g}' has no probe in {} (rewrite them with `latentda probes {}`)",
                p.file,
                bundle.dir.display()
            )
        })
        .collect();
    Ok(SelfTest { status: "passed".into(), seconds: t.elapsed().as_secs_f64(), tolerance: tol, graphs, warnings })
}

/// `n` normals from `rng` (the crate's SplitMix64 + Box-Muller generator: platform independent), element i scaled
/// by `scale(i)`, as the float32 the graphs take.
fn scaled_normals(rng: &mut Rng, n: usize, scale: &dyn Fn(usize) -> f64) -> Vec<f32> {
    (0..n).map(|i| (scale(i) * rng.normal()) as f32).collect()
}

/// Smooth normalised fields: per channel a random large-scale pattern (a sin(lat) term and zonal wavenumbers 1-3
/// times cos(lat)) of about 0.7 standard deviations, plus 0.1 white noise.
fn smooth_state(bundle: &Bundle, rng: &mut Rng) -> Vec<f32> {
    let g = &bundle.layout.grid;
    let (nlat, nlon) = (g.nlat(), g.nlon());
    let mut x = Vec::with_capacity(bundle.layout.state_len());
    for _ in 0..bundle.layout.nchan {
        let a0 = rng.normal();
        let waves: Vec<(f64, f64)> =
            (0..3).map(|_| (rng.normal(), 2.0 * std::f64::consts::PI * rng.uniform())).collect();
        for i in 0..nlat {
            let phi = g.lat[i].to_radians();
            for j in 0..nlon {
                let lam = g.lon[j].to_radians();
                let mut v = a0 * phi.sin();
                for (m, (a, p)) in waves.iter().enumerate() {
                    v += a * phi.cos() * ((m + 1) as f64 * lam + p).cos();
                }
                x.push((SMOOTH_AMPLITUDE * v + WHITE_AMPLITUDE * rng.normal()) as f32);
            }
        }
    }
    x
}

/// Makes the probes of every graph of the bundle with the loaded sessions: the encoder on smooth normalised fields
/// near the mean state; the decoder, its TL and AD at the encoded probe plus a draw of the latent background error
/// (latent sd times N(0, 1)), with TL directions drawn the same way and AD inputs N(0, 1) per grid point; the step
/// model (latent space) at the same latent point, (model space) at the encoder's probe state.
pub fn generate(bundle: &Bundle, ae: &mut Autoencoder, mut step: Option<&mut OnnxStep>) -> Result<Vec<GraphProbe>> {
    let mut rng = Rng::new(SEED);
    let nx = bundle.layout.state_len();
    let nz = bundle.latent_size();
    let s: Vec<f64> = bundle.latent_variance.iter().map(|v| v.sqrt()).collect();
    let sd = |i: usize| s[i];
    let one = |_: usize| 1.0;
    let xn = smooth_state(bundle, &mut rng);
    let mut ze = vec![0f32; nz];
    ae.encode(&xn, &mut ze)?;
    let check = |g: &str, v: &[f32]| -> Result<()> {
        match v.iter().position(|x| !x.is_finite()) {
            Some(i) => Err(Error::bundle(format!(
                "graph '{g}' gives a non-finite output at index {i} on its probe: cannot write probes"
            ))),
            None => Ok(()),
        }
    };
    check("encoder", &ze)?;
    let z: Vec<f32> = ze.iter().zip(scaled_normals(&mut rng, nz, &sd)).map(|(a, b)| a + b).collect();
    let mut probes =
        vec![GraphProbe { graph: "encoder".into(), inputs: vec![("x".into(), xn.clone())], output: ("z".into(), ze) }];
    let dz = scaled_normals(&mut rng, nz, &sd);
    let dx = scaled_normals(&mut rng, nx, &one);
    // (graph, named inputs, output name, output length)
    let todo_entry = |g: &str, inputs: Vec<(&str, Vec<f32>)>, o: &str, n: usize| -> ProbeTodo {
        (g.to_string(), inputs.into_iter().map(|(a, b)| (a.to_string(), b)).collect(), o.to_string(), n)
    };
    let mut todo: Vec<ProbeTodo> = vec![
        todo_entry("decoder", vec![("z", z.clone())], "x", nx),
        todo_entry("decoder_tl", vec![("z", z.clone()), ("dz", dz)], "dx", nx),
        todo_entry("decoder_ad", vec![("z", z.clone()), ("dx", dx)], "dz", nz),
    ];
    if let Some(f) = &bundle.forecast {
        let latent = f.space == ForecastSpace::Latent;
        let (x0, n) = if latent { (z.clone(), nz) } else { (xn.clone(), nx) };
        let d_scale = move |i: usize| if latent { s[i] } else { 0.5 };
        let (sn, dn, dnn, snn) = match f.space {
            ForecastSpace::Latent => ("z", "dz", "dz_next", "z_next"),
            ForecastSpace::Model => ("x", "dx", "dx_next", "x_next"),
        };
        let d = scaled_normals(&mut rng, n, &d_scale);
        let dnext = scaled_normals(&mut rng, n, &d_scale);
        todo.push(("step".into(), vec![(sn.into(), x0.clone())], snn.into(), n));
        todo.push(("step_tl".into(), vec![(sn.into(), x0.clone()), (dn.into(), d)], dnn.into(), n));
        todo.push(("step_ad".into(), vec![(sn.into(), x0), (dnn.into(), dnext)], dn.into(), n));
    }
    for (g, inputs, oname, n) in todo {
        let refs: Vec<&[f32]> = inputs.iter().map(|(_, v)| v.as_slice()).collect();
        let mut out = vec![0f32; n];
        run_graph(&g, &refs, ae, step.as_deref_mut(), &mut out)?;
        check(&g, &out)?;
        probes.push(GraphProbe { graph: g, inputs, output: (oname, out) });
    }
    Ok(probes)
}

/// One probe to compute: graph, named inputs, output name, output length.
type ProbeTodo = (String, Vec<(String, Vec<f32>)>, String, usize);

/// What [`write()`] did.
#[derive(Debug, Clone)]
pub struct Written {
    /// The probes file.
    pub path: PathBuf,
    /// Graphs probed.
    pub graphs: Vec<String>,
    /// Tolerance written to the manifest.
    pub tolerance: f64,
    /// Size of the file, bytes.
    pub bytes: u64,
    /// Backend that computed the expected outputs.
    pub backend: String,
    /// The self-test of the rewritten bundle (run on the same sessions).
    pub self_test: SelfTest,
}

/// SHA-256 of a file, lower-case hex.
fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("cannot read '{}': {e}", path.display())))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the probes of the bundle in `dir` (`latentda probes <bundle>`): opens it (every check but the probes
/// themselves), runs each graph on its probe input with the backend of `exec`, writes the probes file (the
/// manifest's `[probes] file`, default `probes.nc`), sets `[probes]` (the tolerance kept if the manifest has one,
/// else [`DEFAULT_TOLERANCE`]) and the file's checksum in `bundle.toml`, and reopens the bundle and runs the
/// self-test on it. Only the probes' checksum is written: every other file must already match its checksum.
pub fn write(dir: &Path, exec: &ExecOptions) -> Result<Written> {
    let bundle = Bundle::open_without_probes(dir)?;
    let mut ae = Autoencoder::load(&bundle, exec)?;
    let mut step = OnnxStep::load(&bundle, exec)?;
    let probes = generate(&bundle, &mut ae, step.as_mut())?;
    let (file, tolerance) =
        bundle.probes_declared.clone().unwrap_or_else(|| (DEFAULT_FILE.to_string(), DEFAULT_TOLERANCE));
    if bundle.data_files().contains(&file) || file == "bundle.toml" {
        return Err(Error::bundle(format!(
            "probes.file = '{file}' names another file of the bundle: refusing to overwrite it"
        )));
    }
    let path = dir.join(&file);
    let mut dims: Vec<(String, usize)> = vec![("state".into(), bundle.layout.state_len())];
    if bundle.latent_size() != bundle.layout.state_len() {
        dims.push(("latent".into(), bundle.latent_size()));
    }
    let mut vars = Vec::new();
    for p in &probes {
        let all = p.inputs.iter().map(|t| (t, "input")).chain(std::iter::once((&p.output, "expected output")));
        for ((name, data), role) in all {
            vars.push(ncio::F32Var {
                name: var_name(&p.graph, name),
                dim: dim_name(&bundle, data.len()).to_string(),
                attrs: vec![
                    ("graph".into(), p.graph.clone()),
                    ("tensor".into(), name.clone()),
                    ("role".into(), role.into()),
                ],
                data: data.clone(),
            });
        }
    }
    let global = vec![
        ("title".to_string(), format!("latentda known-answer probes of bundle '{}'", bundle.name)),
        ("source".to_string(), format!("latentda {} (`latentda probes`)", env!("CARGO_PKG_VERSION"))),
        ("backend".to_string(), ae.info.detail.clone()),
        ("seed".to_string(), SEED.to_string()),
        (
            "comment".to_string(),
            "per graph <graph>_<tensor>: inputs (batch 1, flattened in C order) and the expected output; encoder inputs \
             are normalised fields; see docs/bundle-format.md"
                .to_string(),
        ),
    ];
    let pending = ncio::write_f32_vars_pending(&path, &dims, &vars, &global)?;
    let digest = sha256_file(pending.path())?;
    let manifest = dir.join("bundle.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| Error::io(format!("cannot read '{}': {e}", manifest.display())))?;
    let new_text = update_manifest(&text, &file, tolerance, &digest);
    let parsed: toml::Table = toml::from_str(&new_text).map_err(|e| {
        Error::bundle(format!("cannot update '{}' (the edited manifest does not parse: {e})", manifest.display()))
    })?;
    let declared_file = parsed.get("probes").and_then(|p| p.get("file")).and_then(|f| f.as_str());
    let declared_sum = parsed.get("checksums").and_then(|c| c.get(&file)).and_then(|d| d.as_str());
    if declared_file != Some(file.as_str()) || declared_sum != Some(digest.as_str()) {
        return Err(Error::bundle(format!(
            "cannot update '{}' automatically (no [checksums] table header?): add [probes] file = \"{file}\" and the \
             checksum \"{file}\" = \"{digest}\" by hand",
            manifest.display()
        )));
    }
    pending.commit()?;
    crate::outfile::write_whole(&manifest, new_text.as_bytes())?;
    let reopened = Bundle::open(dir)?;
    let st = self_test(&reopened, &mut ae, step.as_mut(), true, exec)?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(Written {
        path,
        graphs: probes.iter().map(|p| p.graph.clone()).collect(),
        tolerance,
        bytes,
        backend: ae.info.detail.clone(),
        self_test: st,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf32_raises_the_tolerance_only_on_cuda() {
        let mut e = ExecOptions { cuda_tf32: true, ..Default::default() };
        assert_eq!(tolerance_for(1e-4, &e), 1e-4);
        e.device = Device::Cuda(0);
        assert_eq!(tolerance_for(1e-4, &e), TF32_TOLERANCE);
        e.cuda_tf32 = false;
        assert_eq!(tolerance_for(1e-4, &e), 1e-4);
    }

    #[test]
    fn probe_generator_is_deterministic() {
        let (mut a, mut b) = (Rng::new(SEED), Rng::new(SEED));
        let x: Vec<f64> = (0..1000).map(|_| a.normal()).collect();
        assert!(x.iter().zip((0..1000).map(|_| b.normal())).all(|(p, q)| p.to_bits() == q.to_bits()));
        let mean = x.iter().sum::<f64>() / 1000.0;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 1000.0;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "{mean} {var}");
    }
}
