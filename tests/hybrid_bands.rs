//! Hybrid weights that vary by latitude band (issue 20, item 3): alpha(phi) = alpha_tropics + (alpha -
//! alpha_tropics) t(phi), likewise beta, with t the cosine ramp from 0 at |phi| <= lat0 to 1 at |phi| >= lat1.
//! Adjoint tests of the band-weighted U / U^T (host B operator and the analysis' control transform), the analysis
//! against the closed-form Kalman solution built from U's columns, bit-identity with the scalar hybrid when the
//! tropical weights equal the extratropical ones, and the background check's variance against diag(U U^T). The
//! same tests run with weights per variable and group (`hybrid_variable_weights`, [`VARIABLES`]), and with southern
//! extratropical weights apart from the northern ones (`hybrid_alpha_sh`, `beta_sh`, ..., [`HEMISPHERES`]).

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use latentda::bmat::hybrid::{band_ramp, Hybrid};
use latentda::bmat::static_b::StaticB;
use latentda::bmat::BOperator;
use latentda::obs::operator::ObsOperator;
use latentda::obs::{Observation, QcFlag};
use latentda::var::control::{dot_test, LatentControl};
use latentda::var::options::BKind;
use latentda::var::solver::ControlSpace;
use latentda::{Analyser, Method, Options};

const BANDS: &str = "hybrid_alpha = 2.0\nhybrid_beta = 0.5\nhybrid_alpha_tropics = 0.5\nhybrid_beta_tropics = 1.5\n\
                     hybrid_band_lat = [5.0, 45.0]\nhybrid_variables = [\"t\", \"ps\"]";

/// Per-variable weights over BANDS: t its own latent weight at every latitude and its own tropical beta, ps through
/// the `mass` group (t's own entry wins over the group's), u its own tropical alpha (u has no static part).
const VARIABLES: &str = "hybrid_variable_weights = { t = { alpha = 0.3, beta_tropics = 0.2 }, \
                         mass = { alpha = 1.2, alpha_tropics = 0.9, beta = 2.5 }, u = { alpha_tropics = 3.0 } }";

/// Hemispheric weights over BANDS: global southern weights, t its own southern beta (its southern alpha is its own
/// alpha), ps through `mass` its own southern alpha (its southern beta is the entry's beta), u the global ones.
const HEMISPHERES: &str =
    "hybrid_alpha_sh = 1.6\nhybrid_beta_sh = 0.9\nhybrid_variable_weights = { t = { alpha = 0.3, \
                           beta_tropics = 0.2, beta_sh = 1.4 }, mass = { alpha = 1.2, alpha_tropics = 0.9, beta = 2.5, \
                           alpha_sh = 0.6 }, u = { alpha_tropics = 3.0 } }";

/// The weight configurations the tests run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Config {
    /// BANDS.
    Bands,
    /// BANDS and VARIABLES.
    Variables,
    /// BANDS and HEMISPHERES.
    Hemispheres,
}

const CONFIGS: [Config; 3] = [Config::Bands, Config::Variables, Config::Hemispheres];

/// The weights [alpha, beta, alpha_tropics, beta_tropics, alpha_sh, beta_sh] of variable `name` in configuration
/// `c`, as this test resolves them (written out, not the library's resolution).
fn own_weights(name: &str, c: Config) -> [f64; 6] {
    match (c, name) {
        (Config::Bands, _) => [2.0, 0.5, 0.5, 1.5, 2.0, 0.5],
        (Config::Variables, "t") => [0.3, 0.5, 0.3, 0.2, 0.3, 0.5],
        (Config::Variables, "ps") => [1.2, 2.5, 0.9, 2.5, 1.2, 2.5],
        (Config::Variables, "u") => [2.0, 0.5, 3.0, 1.5, 2.0, 0.5],
        (Config::Hemispheres, "t") => [0.3, 0.5, 0.3, 0.2, 0.3, 1.4],
        (Config::Hemispheres, "ps") => [1.2, 2.5, 0.9, 2.5, 0.6, 2.5],
        (Config::Hemispheres, "u") => [2.0, 0.5, 3.0, 1.5, 1.6, 0.9],
        _ => unreachable!("{name}"),
    }
}

/// The options of configuration `c`.
fn config(c: Config) -> String {
    match c {
        Config::Bands => BANDS.to_string(),
        Config::Variables => format!("{BANDS}\n{VARIABLES}"),
        Config::Hemispheres => format!("{BANDS}\n{HEMISPHERES}"),
    }
}

fn open(name: &str, toml: &str) -> Analyser {
    Analyser::open(fixture(name), Options::from_toml(toml).unwrap()).unwrap()
}

fn sample(a: &Analyser, name: &str) -> (Vec<f64>, Vec<Observation>) {
    let s = fixture(name).join("sample");
    let lay = &a.bundle.layout;
    let xb = latentda::bundle::ncio::read_state(&s.join("background.nc"), lay).unwrap();
    let (obs, _) = latentda::obs::read_csv(&s.join("obs.csv"), lay).unwrap();
    (xb, obs)
}

/// The test's own weight at latitude `phi` (cosine ramp written out here, not the library's).
fn weight(phi: f64, tropics: f64, extra: f64, lat0: f64, lat1: f64) -> f64 {
    let a = phi.abs();
    let t = if a <= lat0 {
        0.0
    } else if a >= lat1 {
        1.0
    } else {
        (1.0 - (std::f64::consts::PI * (a - lat0) / (lat1 - lat0)).cos()) / 2.0
    };
    tropics + (extra - tropics) * t
}

/// Per state element: (alpha(v, phi), beta(v, phi) P) of configuration `c` (P: t and ps only, not u); the ramp runs
/// to the northern weights north of the equator and to the southern ones south of it.
fn band_weights(a: &Analyser, c: Config) -> (Vec<f64>, Vec<f64>) {
    let lay = &a.bundle.layout;
    let (np, nlon) = (lay.grid.npoints(), lay.grid.nlon());
    let iu = lay.var_index("u").unwrap();
    let n = lay.state_len();
    let at = |i: usize| {
        let v = lay.channel_owner(i / np).0;
        (v, own_weights(&lay.variables[v].name, c), lay.grid.lat[(i % np) / nlon])
    };
    // the extratropical pair of latitude phi: northern (0, 1) or southern (4, 5)
    let x = |phi: f64| if phi < 0.0 { 4 } else { 0 };
    let al = (0..n)
        .map(|i| {
            let (_, w, phi) = at(i);
            weight(phi, w[2], w[x(phi)], 5.0, 45.0)
        })
        .collect();
    let be = (0..n)
        .map(|i| {
            let (v, w, phi) = at(i);
            if v == iu {
                0.0
            } else {
                weight(phi, w[3], w[x(phi) + 1], 5.0, 45.0)
            }
        })
        .collect();
    (al, be)
}

#[test]
fn ramp_and_settings_resolve_the_band_weights() {
    assert_eq!(band_ramp(3.0, 10.0, 30.0), 0.0);
    assert_eq!(band_ramp(-10.0, 10.0, 30.0), 0.0);
    assert_eq!(band_ramp(-30.0, 10.0, 30.0), 1.0);
    assert_eq!(band_ramp(75.0, 10.0, 30.0), 1.0);
    assert!((band_ramp(20.0, 10.0, 30.0) - 0.5).abs() < 1e-15);
    assert!((band_ramp(-15.0, 10.0, 30.0) - weight(15.0, 0.0, 1.0, 10.0, 30.0)).abs() < 1e-15);
    // Monotone in |phi|.
    let r: Vec<f64> = (0..=90).map(|d| band_ramp(d as f64, 10.0, 30.0)).collect();
    assert!(r.windows(2).all(|w| w[1] >= w[0]));
    let a = open("tanh", BANDS);
    let hs = a.hybrid_settings().unwrap();
    assert!(hs.banded());
    assert_eq!((hs.alpha, hs.alpha_tropics, hs.beta, hs.beta_tropics, hs.band_lat), (2.0, 0.5, 0.5, 1.5, [5.0, 45.0]));
    assert_eq!(hs.alpha_ref(), 2.0);
    let (fa, fb) = hs.weight_fields(&a.bundle.layout).unwrap();
    let (al, _) = band_weights(&a, Config::Bands);
    for i in 0..fa.len() {
        assert!((fa[i] * fa[i] - al[i]).abs() < 1e-14, "alpha field at {i}");
    }
    assert!(fb.iter().all(|b| (0.5f64.sqrt() - 1e-15..=1.5f64.sqrt() + 1e-15).contains(b)));
    // Default band and no band weights.
    let a = open("tanh", "hybrid_alpha_tropics = 0.3");
    let hs = a.hybrid_settings().unwrap();
    assert_eq!((hs.band_lat, hs.beta_tropics, hs.beta), ([10.0, 30.0], 1.0, 1.0));
    let a = open("tanh", "hybrid_alpha = 0.4\nhybrid_beta = 0.7");
    let hs = a.hybrid_settings().unwrap();
    assert!(!hs.banded() && hs.weight_fields(&a.bundle.layout).is_none());
    assert_eq!((hs.alpha_tropics, hs.beta_tropics), (0.4, 0.7));
    // Validation names the key.
    for (bad, key) in [
        ("hybrid_band_lat = [30.0, 10.0]", "hybrid_band_lat"),
        ("hybrid_band_lat = [-1.0, 10.0]", "hybrid_band_lat"),
        ("hybrid_band_lat = [10.0, 95.0]", "hybrid_band_lat"),
        ("hybrid_band_lat = [10.0, 10.0]", "hybrid_band_lat"),
        ("hybrid_alpha_tropics = -0.5", "hybrid_alpha_tropics"),
        ("hybrid_beta_tropics = inf", "hybrid_beta_tropics"),
    ] {
        let e = Options::from_toml(bad).unwrap_err();
        assert!(e.message.contains(key), "{bad}: {}", e.message);
    }
    let a = open("tanh", "hybrid_alpha_tropics = 0.0\nhybrid_beta_tropics = 0.0");
    assert!(a.hybrid_settings().unwrap_err().message.contains("tropics"));
    // Southern weights: the northern ones unless given; one of them alone makes the weights vary.
    let hs = open("tanh", BANDS).hybrid_settings().unwrap();
    assert_eq!((hs.alpha_sh, hs.beta_sh), (2.0, 0.5));
    let a = open("tanh", "hybrid_alpha = 0.4\nhybrid_beta = 0.7\nhybrid_beta_sh = 0.2");
    let hs = a.hybrid_settings().unwrap();
    assert!(hs.banded());
    assert_eq!(hs.global(), [0.4, 0.7, 0.4, 0.7, 0.4, 0.2]);
    let (_, fb) = hs.weight_fields(&a.bundle.layout).unwrap();
    let lay = &a.bundle.layout;
    let (np, nlon) = (lay.grid.npoints(), lay.grid.nlon());
    for (i, b) in fb.iter().enumerate() {
        let phi = lay.grid.lat[(i % np) / nlon];
        let want = weight(phi, 0.7, if phi < 0.0 { 0.2 } else { 0.7 }, 10.0, 30.0).sqrt();
        assert!((b - want).abs() < 1e-15, "beta field at {i} (lat {phi}): {b} vs {want}");
    }
    assert!(lay.grid.lat.iter().any(|p| *p < -30.0) && lay.grid.lat.iter().any(|p| *p > 30.0));
    for (bad, key) in [("hybrid_alpha_sh = -0.5", "hybrid_alpha_sh"), ("hybrid_beta_sh = nan", "hybrid_beta_sh")] {
        let e = Options::from_toml(bad).unwrap_err();
        assert!(e.message.contains(key), "{bad}: {}", e.message);
    }
    let a = open("tanh", "hybrid_alpha_sh = 0.0\nhybrid_beta_sh = 0.0");
    let e = a.hybrid_settings().unwrap_err();
    assert!(e.message.contains("southern"), "{}", e.message);
}

#[test]
fn bundle_hybrid_table_carries_band_weights_and_options_override_them() {
    let dir = copy_fixture("tanh", "hybrid_bands_manifest");
    let m = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    let m = m.replace(
        "[checksums]",
        "[hybrid]\nalpha = 0.7\nbeta = 0.3\nalpha_tropics = 0.4\nbeta_tropics = 1.0\nalpha_sh = 0.5\n\
         band_lat = [15.0, 35.0]\n\n[checksums]",
    );
    std::fs::write(dir.join("bundle.toml"), &m).unwrap();
    let a = Analyser::open(&dir, Options::default()).unwrap();
    let hs = a.hybrid_settings().unwrap();
    assert_eq!((hs.alpha, hs.beta, hs.alpha_tropics, hs.beta_tropics, hs.band_lat), (0.7, 0.3, 0.4, 1.0, [15.0, 35.0]));
    // the southern alpha from the bundle, its beta the (northern) extratropical one; the options override them
    assert_eq!((hs.alpha_sh, hs.beta_sh), (0.5, 0.3));
    let hs = Analyser::open(&dir, Options::from_toml("hybrid_alpha_sh = 0.9").unwrap()).unwrap().hybrid_settings();
    assert_eq!(hs.unwrap().alpha_sh, 0.9);
    let (code, out, err) = cli(&["info", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("southern extratropics: alpha 0.5 beta 0.3"), "{out}");
    std::fs::write(dir.join("bundle.toml"), m.replace("alpha_sh = 0.5", "alpha_sh = -0.5")).unwrap();
    let e = Analyser::open(&dir, Options::default()).unwrap_err();
    assert!(e.message.contains("hybrid.alpha_sh"), "{}", e.message);
    std::fs::write(dir.join("bundle.toml"), &m).unwrap();
    let a =
        Analyser::open(&dir, Options::from_toml("hybrid_beta_tropics = 0.6\nhybrid_band_lat = [0.0, 20.0]").unwrap())
            .unwrap();
    let hs = a.hybrid_settings().unwrap();
    assert_eq!((hs.alpha_tropics, hs.beta_tropics, hs.band_lat), (0.4, 0.6, [0.0, 20.0]));
    std::fs::write(dir.join("bundle.toml"), m.replace("band_lat = [15.0, 35.0]", "band_lat = [35.0, 15.0]")).unwrap();
    let e = Analyser::open(&dir, Options::default()).unwrap_err();
    assert!(e.message.contains("hybrid.band_lat"), "{}", e.message);
    std::fs::write(dir.join("bundle.toml"), m.replace("alpha_tropics = 0.4", "alpha_tropics = -0.4")).unwrap();
    let e = Analyser::open(&dir, Options::default()).unwrap_err();
    assert!(e.message.contains("hybrid.alpha_tropics"), "{}", e.message);
}

#[test]
fn variable_weights_resolve_by_variable_and_group() {
    for c in [Config::Variables, Config::Hemispheres] {
        let a = open("tanh", &config(c));
        let hs = a.hybrid_settings().unwrap();
        assert!(hs.banded() && hs.per_variable_weights());
        let lay = a.bundle.layout.clone();
        for (v, var) in lay.variables.iter().enumerate() {
            assert_eq!(hs.per_variable[v], own_weights(&var.name, c), "{c:?} {}", var.name);
        }
        assert_eq!(hs.alpha_ref(), 3.0);
        let (fa, fb) = hs.weight_fields(&lay).unwrap();
        let (al, be) = band_weights(&a, c);
        let iu = lay.var_index("u").unwrap();
        let np = lay.grid.npoints();
        for i in 0..fa.len() {
            assert!((fa[i] * fa[i] - al[i]).abs() < 1e-14, "{c:?}: alpha field at {i}");
            // the field carries beta on u too; P (hybrid_variables) removes the static part there
            if lay.channel_owner(i / np).0 != iu {
                assert!((fb[i] * fb[i] - be[i]).abs() < 1e-14, "{c:?}: beta field at {i}");
            }
        }
    }
    // Band weights alone: every variable has the global four.
    let hs = open("tanh", BANDS).hybrid_settings().unwrap();
    assert!(hs.banded() && !hs.per_variable_weights());
    // Errors name the key, the entry and the weight.
    for (bad, want) in [
        ("hybrid_variable_weights = { q = { alpha = -0.5 } }", "hybrid_variable_weights.q.alpha"),
        ("hybrid_variable_weights = { t = { beta_tropics = nan } }", "hybrid_variable_weights.t.beta_tropics"),
        ("hybrid_variable_weights = { t = { gamma = 1.0 } }", "gamma"),
    ] {
        let e = Options::from_toml(bad).unwrap_err();
        assert!(e.message.contains(want), "{bad}: {}", e.message);
    }
    let e = open("tanh", "hybrid_variable_weights = { q = { alpha = 0.5 } }").hybrid_settings().unwrap_err();
    assert!(e.message.contains("'q'") && e.message.contains("hybrid_variable_weights"), "{}", e.message);
    let e =
        open("tanh", "hybrid_variable_weights = { ps = { alpha = 0.0, beta = 0.0 } }").hybrid_settings().unwrap_err();
    assert!(e.message.contains("'ps'") && e.message.contains("both 0"), "{}", e.message);
    let e = open("tanh", "hybrid_variable_weights = { wind = { alpha_tropics = 0.0, beta_tropics = 0.0 } }")
        .hybrid_settings()
        .unwrap_err();
    assert!(e.message.contains("'u'") && e.message.contains("tropics"), "{}", e.message);
    let e = open("tanh", "hybrid_variable_weights = { ps = { alpha_sh = 0.0, beta_sh = 0.0 } }")
        .hybrid_settings()
        .unwrap_err();
    assert!(e.message.contains("'ps'") && e.message.contains("southern"), "{}", e.message);
    let e = Options::from_toml("hybrid_variable_weights = { t = { beta_sh = -1.0 } }").unwrap_err();
    assert!(e.message.contains("hybrid_variable_weights.t.beta_sh"), "{}", e.message);
}

#[test]
fn bundle_variable_weights_table_and_options_replace_it() {
    let dir = copy_fixture("tanh", "hybrid_variable_weights_manifest");
    let m = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    let m = m.replace(
        "[checksums]",
        "[hybrid]\nalpha = 0.7\nbeta = 0.3\n\n[hybrid.variable_weights.t]\nalpha = 0.2\nbeta_tropics = 0.9\n\n\
         [hybrid.variable_weights.wind]\nalpha = 1.1\n\n[checksums]",
    );
    std::fs::write(dir.join("bundle.toml"), &m).unwrap();
    let a = Analyser::open(&dir, Options::default()).unwrap();
    let hs = a.hybrid_settings().unwrap();
    let lay = &a.bundle.layout;
    let w = |n: &str| hs.per_variable[lay.var_index(n).unwrap()];
    assert_eq!(
        (w("t"), w("u"), w("ps")),
        ([0.2, 0.3, 0.2, 0.9, 0.2, 0.3], [1.1, 0.3, 1.1, 0.3, 1.1, 0.3], [0.7, 0.3, 0.7, 0.3, 0.7, 0.3])
    );
    // `latentda info` lists the resolved weights of the variables that differ from the global ones
    let (code, out, err) = cli(&["info", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("t: alpha 0.2 beta 0.3, tropics alpha 0.2 beta 0.9, southern alpha 0.2 beta 0.3"), "{out}");
    assert!(
        out.contains("u: alpha 1.1 beta 0.3, tropics alpha 1.1 beta 0.3, southern alpha 1.1 beta 0.3")
            && !out.contains("ps: alpha"),
        "{out}"
    );
    // The options' table replaces the bundle's: t and u fall back to the global weights.
    let a =
        Analyser::open(&dir, Options::from_toml("hybrid_variable_weights = { ps = { beta = 0.6 } }").unwrap()).unwrap();
    let hs = a.hybrid_settings().unwrap();
    let lay = &a.bundle.layout;
    let w = |n: &str| hs.per_variable[lay.var_index(n).unwrap()];
    assert_eq!(
        (w("t"), w("u"), w("ps")),
        ([0.7, 0.3, 0.7, 0.3, 0.7, 0.3], [0.7, 0.3, 0.7, 0.3, 0.7, 0.3], [0.7, 0.6, 0.7, 0.6, 0.7, 0.6])
    );
    std::fs::write(dir.join("bundle.toml"), m.replace("alpha = 0.2", "alpha = -0.2")).unwrap();
    let e = Analyser::open(&dir, Options::default()).unwrap_err();
    assert!(e.message.contains("hybrid.variable_weights.t.alpha"), "{}", e.message);
    std::fs::write(dir.join("bundle.toml"), m.replace("variable_weights.t]", "variable_weights.q]")).unwrap();
    let e = Analyser::open(&dir, Options::default()).unwrap().hybrid_settings().unwrap_err();
    assert!(e.message.contains("hybrid.variable_weights") && e.message.contains("'q'"), "{}", e.message);
}

/// (1) The band-weighted U and U^T are adjoint: the host B operator (lda_bsqrt with b_operator = hybrid) and the
/// analysis' control transform (nonlinear and linear latent part), float32 decoder.
#[test]
fn band_weighted_hybrid_passes_adjoint_tests() {
    for c in CONFIGS {
        band_weighted_adjoint_tests(c);
    }
}

fn band_weighted_adjoint_tests(c: Config) {
    let mut a = open("tanh", &config(c));
    let (xb, _) = sample(&a, "tanh");
    let z = a.encode_background(&xb).unwrap();
    a.prepare_b(BKind::Hybrid, Some(&z)).unwrap();
    for seed in [17, 18] {
        let t = a.with_b(BKind::Hybrid, |b, ae| b.sqrt_test(ae, seed)).unwrap();
        eprintln!("band-weighted hybrid B operator ({c:?}): adjoint test rel {:.2e}", t.rel);
        assert!(t.rel < 1e-5, "adjoint test rel {:e}", t.rel);
    }
    // The analysis' transform: alpha_ref folded into s, sqrt(alpha(phi) / alpha_ref) and sqrt(beta(phi)) as fields.
    let hs = a.hybrid_settings().unwrap();
    let lay = a.bundle.layout.clone();
    let (fa, fb) = hs.weight_fields(&lay).unwrap();
    let r = 1.0 / hs.alpha_ref().sqrt();
    let fa: Vec<f64> = fa.iter().map(|x| x * r).collect();
    let lv: Vec<f64> = a.bundle.latent_variance.iter().map(|v| v * hs.alpha_ref()).collect();
    let mut st = StaticB::for_bundle(&a.bundle, a.bundle.baseline_variance_factor).unwrap();
    st.set_selection(&lay, &hs.keep);
    let (mean, sd, np, n) = (a.bundle.mean.clone(), a.bundle.std.clone(), lay.grid.npoints(), lay.state_len());
    for linear in [false, true] {
        let latent = LatentControl::new(&mut a.ae, &xb, z.clone(), &lv, &mean, &sd, np, false).unwrap().linear(linear);
        let mut ctrl = Hybrid::new(latent, &mut st, 1.0, 1.0, n).with_fields(fa.clone(), fb.clone());
        let nc = ctrl.size();
        let mut w = latentda::diag::checks::Rng::new(3).normals(nc);
        w.iter_mut().for_each(|x| *x *= 0.3);
        ctrl.linearize(&w).unwrap();
        let t = dot_test(&mut ctrl, n, 5).unwrap();
        eprintln!("band-weighted hybrid control transform (linear {linear}, {c:?}): adjoint test rel {:.2e}", t.rel);
        assert!(t.rel < 1e-5, "linear {linear}: adjoint test rel {:e}", t.rel);
    }
}

/// (2) With the linear fixture, the band-weighted hybrid analysis equals the Kalman solution dx = U G^T (G G^T +
/// R)^-1 d, G = H U, built from U's columns: the latent B's TL columns and the static B's columns times the test's
/// own sqrt(alpha(phi)), sqrt(beta(phi)) P.
#[test]
fn band_weighted_hybrid_with_linear_decoder_equals_closed_form_kalman_solution() {
    let band = kalman_check(Config::Bands);
    let per_variable = kalman_check(Config::Variables);
    let hemispheres = kalman_check(Config::Hemispheres);
    // The per-variable and hemispheric weights matter: other analyses than the band weights alone.
    let norm: f64 = band.iter().map(|a| a * a).sum::<f64>().sqrt();
    for (what, other) in [("per-variable", &per_variable), ("hemispheric", &hemispheres)] {
        let diff: f64 = band.iter().zip(other).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
        assert!(diff > 1e-3 * norm, "{what} weights changed nothing: {diff:e}");
    }
}

/// The Kalman check of one configuration; returns the analysis increment.
fn kalman_check(c: Config) -> Vec<f64> {
    let opt = format!("outer_loops = 1\nmax_inner = 400\ngradient_reduction = 1e-13\nbg_check = 0.0\n{}", config(c));
    let mut a = open("linear", &opt);
    let (xb, obs) = sample(&a, "linear");
    let res = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let lay = a.bundle.layout.clone();
    let mut flags = vec![QcFlag::Used; obs.len()];
    let h = ObsOperator::build(&lay, &obs, &mut flags);
    let ns = lay.state_len();
    let (al, be) = band_weights(&a, c);
    let mut lb = a.latent_b(&xb).unwrap();
    let mut sb = StaticB::new(&lay, a.bundle.baseline.as_ref().unwrap()).unwrap();
    let mut cols: Vec<Vec<f64>> = Vec::new();
    for k in 0..lb.control_size() {
        let mut e = vec![0.0; lb.control_size()];
        e[k] = 1.0;
        let mut c = vec![0.0; ns];
        lb.sqrt(&mut a.ae, &e, &mut c).unwrap();
        c.iter_mut().zip(&al).for_each(|(v, w)| *v *= w.sqrt());
        cols.push(c);
    }
    for k in 0..sb.size() {
        let mut e = vec![0.0; sb.size()];
        e[k] = 1.0;
        let mut c = vec![0.0; ns];
        sb.sqrt_apply(&e, &mut c);
        c.iter_mut().zip(&be).for_each(|(v, w)| *v *= w.sqrt());
        cols.push(c);
    }
    let dx_kalman = kalman(&cols, &h, &obs, &xb);
    let dx: Vec<f64> = res.analysis.iter().zip(&xb).map(|(a, b)| a - b).collect();
    let num: f64 = dx.iter().zip(&dx_kalman).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let den: f64 = dx_kalman.iter().map(|b| b * b).sum::<f64>().sqrt();
    eprintln!("band-weighted hybrid ({c:?}) vs Kalman: relative difference {:.2e}", num / den);
    assert!(den > 0.0);
    assert!(
        num / den < 1e-6,
        "hybrid increment differs from the Kalman solution by {:e} (relative, 2-norm)",
        num / den
    );
    // The bands matter here: the scalar hybrid (extratropical weights everywhere) gives another analysis.
    let scalar = "outer_loops = 1\nmax_inner = 400\ngradient_reduction = 1e-13\nbg_check = 0.0\n\
                  hybrid_alpha = 2.0\nhybrid_beta = 0.5\nhybrid_variables = [\"t\", \"ps\"]";
    let mut s = open("linear", scalar);
    let rs = s.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let diff: f64 = rs.analysis.iter().zip(&res.analysis).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    assert!(diff > 1e-3 * den, "band weights changed nothing: {diff:e}");
    dx
}

/// (3) Tropical weights equal to the extratropical ones: bit for bit the scalar hybrid (analysis, J, flags).
#[test]
fn equal_band_weights_are_bit_identical_to_the_scalar_hybrid() {
    for (fx, form) in [("tanh", "nonlinear"), ("tanh", "linear"), ("linear", "linear")] {
        let base = format!(
            "latent_increment = \"{form}\"\nhybrid_alpha = 0.7\nhybrid_beta = 0.3\nhybrid_variables = [\"t\", \"ps\"]"
        );
        let banded =
            format!("{base}\nhybrid_alpha_tropics = 0.7\nhybrid_beta_tropics = 0.3\nhybrid_alpha_sh = 0.7\nhybrid_beta_sh = 0.3\nhybrid_band_lat = [5.0, 45.0]");
        // per-variable weights equal to the global ones: the scalar hybrid too
        let per_variable = format!(
            "{base}\nhybrid_variable_weights = {{ u = {{ alpha = 0.7, beta = 0.3 }}, mass = {{ alpha_tropics = 0.7 }} }}"
        );
        assert!(!open(fx, &per_variable).hybrid_settings().unwrap().banded());
        let mut a = open(fx, &base);
        let mut b = open(fx, if form == "linear" { &per_variable } else { &banded });
        let (xb, obs) = sample(&a, fx);
        let ra = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
        let rb = b.analyse(&xb, &obs, Method::Hybrid).unwrap();
        assert!(
            ra.analysis.iter().zip(&rb.analysis).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{fx} {form}: analyses differ"
        );
        assert_eq!(ra.qc, rb.qc);
        let (sa, sb) = (ra.report.solver.unwrap(), rb.report.solver.unwrap());
        assert_eq!(sa.j_final.to_bits(), sb.j_final.to_bits());
        assert_eq!(ra.report.background_check.sigma_b, rb.report.background_check.sigma_b);
        // The B operator served to hosts, too.
        let z = a.encode_background(&xb).unwrap();
        a.prepare_b(BKind::Hybrid, Some(&z)).unwrap();
        b.prepare_b(BKind::Hybrid, Some(&z)).unwrap();
        let xi = latentda::diag::checks::Rng::new(9).normals(a.control_size(BKind::Hybrid).unwrap());
        let mut xa = vec![0.0; xb.len()];
        let mut xbb = vec![0.0; xb.len()];
        a.with_b(BKind::Hybrid, |op, ae| op.sqrt(ae, &xi, &mut xa)).unwrap();
        b.with_b(BKind::Hybrid, |op, ae| op.sqrt(ae, &xi, &mut xbb)).unwrap();
        assert!(xa.iter().zip(&xbb).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
    // Different tropical weights do change the analysis (the comparison above can fail).
    let mut a = open("tanh", "hybrid_alpha = 0.7\nhybrid_beta = 0.3");
    let mut b = open("tanh", "hybrid_alpha = 0.7\nhybrid_beta = 0.3\nhybrid_beta_tropics = 0.9");
    let (xb, obs) = sample(&a, "tanh");
    let ra = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let rb = b.analyse(&xb, &obs, Method::Hybrid).unwrap();
    assert!(ra.analysis.iter().zip(&rb.analysis).any(|(x, y)| x != y));
}

/// (4) The background check's variance is diag(U U^T) of the band-weighted U, exactly (latent size <= the exact
/// threshold): against the brute-force diagonal from U's columns, against alpha(phi) diag B_l + beta(phi) P diag B_s
/// (the test's own weights), and through the check's flags at 0.9 / 1.1 thresholds in the tropics, the ramp and the
/// extratropics.
#[test]
fn background_check_variance_is_the_diagonal_of_u_ut() {
    for c in CONFIGS {
        variance_check(c);
    }
}

fn variance_check(c: Config) {
    let mut a = open("tanh", &config(c));
    let (xb, _) = sample(&a, "tanh");
    let z = a.encode_background(&xb).unwrap();
    a.prepare_b(BKind::Hybrid, Some(&z)).unwrap();
    let (v, how) = a.with_b(BKind::Hybrid, |b, ae| Ok((b.variance(ae)?.to_vec(), b.variance_method()))).unwrap();
    assert!(how.starts_with("hybrid with varying weights") && how.contains("exact"), "{how}");
    let brute = a
        .with_b(BKind::Hybrid, |b, ae| {
            let (n, m) = (b.control_size(), b.state_len());
            let (d, exact) = latentda::bmat::diag_of_sqrt(n, m, n, |c, x| b.sqrt(ae, c, x))?;
            assert!(exact);
            Ok(d)
        })
        .unwrap();
    let vl = {
        a.prepare_b(BKind::Latent, Some(&z)).unwrap();
        a.with_b(BKind::Latent, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap()
    };
    // alpha_ref = the largest alpha of any variable and band (2 with BANDS, 3 with VARIABLES) is folded into the
    // latent variances (issue 23, item 3: the minimisation's operator): the latent part is alpha(v, phi) / alpha_ref
    // times the latent B with factor alpha_ref, exactly, and alpha(v, phi) diag(latent) up to the float32 decoder
    // TL's round-off
    let aref = if c == Config::Bands { 2.0 } else { 3.0 };
    assert_eq!(a.hybrid_settings().unwrap().alpha_ref(), aref);
    let vl2 = {
        let mut a2 = open("tanh", &format!("latent_variance_factor = {aref:?}"));
        a2.prepare_b(BKind::Latent, Some(&z)).unwrap();
        a2.with_b(BKind::Latent, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap()
    };
    a.prepare_b(BKind::Static, None).unwrap();
    let vs = a.with_b(BKind::Static, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    let (al, be) = band_weights(&a, c);
    let mut max_rel: f64 = 0.0;
    for i in 0..v.len() {
        assert!(
            (vl2[i] - aref * vl[i]).abs() <= 1e-6 * vl2[i],
            "latent variance x {aref} at {i}: {} vs {}",
            vl2[i],
            aref * vl[i]
        );
        let want = al[i] / aref * vl2[i] + be[i] * vs[i];
        assert!((v[i] - brute[i]).abs() <= 1e-9 * brute[i], "at {i}: variance {} vs diag(U U^T) {}", v[i], brute[i]);
        assert!((v[i] - want).abs() <= 1e-12 * want, "at {i}: variance {} vs formula {want}", v[i]);
        max_rel = max_rel.max((v[i] - brute[i]).abs() / brute[i]);
    }
    eprintln!("band-weighted hybrid variance vs brute-force diag(U U^T): max rel {max_rel:.2e}");
    // The scalar hybrid's variance would differ in the tropics.
    let scalar = |i: usize| 2.0 * vl[i] + if be[i] > 0.0 { 0.5 * vs[i] } else { 0.0 };
    assert!((0..v.len()).any(|i| (v[i] - scalar(i)).abs() > 0.1 * v[i]));
    // The analysis' background check uses it: observations of t at 0.9 and 1.1 (and -0.95, -1.2) thresholds.
    let lay = a.bundle.layout.clone();
    let it = lay.var_index("t").unwrap();
    let sd: Vec<f64> = brute.iter().map(|v| v.sqrt()).collect();
    let mut obs = Vec::new();
    let factors = [0.9, 1.1, -0.95, -1.2, 0.9, 1.1];
    let lats = [2.0, -3.0, 20.0, -25.0, 60.0, -50.0];
    for (i, (f, lat)) in factors.iter().zip(lats).enumerate() {
        let mut o = Observation {
            var: Some(it),
            var_name: "t".into(),
            lat,
            lon: 30.0 + 40.0 * i as f64,
            level: Some(0.5),
            value: 0.0,
            sigma: 0.3,
            line: None,
            time: 0.0,
            malformed: None,
        };
        let mut fl = vec![QcFlag::Used];
        let h = ObsOperator::build(&lay, std::slice::from_ref(&o), &mut fl);
        let (mut hx, mut sb) = (vec![0.0], vec![0.0]);
        h.apply(&xb, &mut hx);
        h.apply(&sd, &mut sb);
        o.value = hx[0] + f * 5.0 * (o.sigma * o.sigma + sb[0] * sb[0]).sqrt();
        obs.push(o);
    }
    let r = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    use QcFlag::{BackgroundCheck as Bg, Used};
    assert_eq!(r.qc, [Used, Bg, Used, Bg, Used, Bg]);
    assert!(r.report.background_check.sigma_b.starts_with("hybrid with varying weights"));
}

/// The hybrid with alpha 1 and beta 0 is L3DVar (the static part has zero weight everywhere): the matrix's and the
/// cycling driver's way to size the latent B alone per variable (`l3dvar-pv`) rests on it. The same analysis bit for
/// bit (the static part's zero-weight columns add exact zeros) and the same QC; with a static weight for t, the
/// analysis changes (the comparison can fail).
#[test]
fn hybrid_with_zero_static_weight_is_l3dvar() {
    for (fx, form) in [("tanh", "nonlinear"), ("tanh", "linear"), ("linear", "linear")] {
        let base = format!("latent_increment = \"{form}\"");
        let mut a = open(fx, &base);
        let mut b = open(fx, &format!("{base}\nhybrid_alpha = 1.0\nhybrid_beta = 0.0"));
        let (xb, obs) = sample(&a, fx);
        let ra = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
        let rb = b.analyse(&xb, &obs, Method::Hybrid).unwrap();
        let inc: f64 = ra.analysis.iter().zip(&xb).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
        let diff: f64 = ra.analysis.iter().zip(&rb.analysis).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
        assert!(inc > 0.0);
        assert!(
            ra.analysis.iter().zip(&rb.analysis).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{fx} {form}: |xa(hybrid 1, 0) - xa(l3dvar)| = {diff:e}, |increment| {inc:e}"
        );
        assert_eq!(ra.qc, rb.qc, "{fx} {form}");
    }
    let mut a = open("tanh", "hybrid_alpha = 1.0\nhybrid_beta = 0.0");
    let mut b = open("tanh", "hybrid_alpha = 1.0\nhybrid_beta = 0.0\nhybrid_variable_weights = { t = { beta = 0.5 } }");
    let (xb, obs) = sample(&a, "tanh");
    let ra = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let rb = b.analyse(&xb, &obs, Method::Hybrid).unwrap();
    assert!(ra.analysis.iter().zip(&rb.analysis).any(|(x, y)| (x - y).abs() > 1e-9));
}
