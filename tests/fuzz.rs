//! Fuzzing on stable Rust (issue 14): property tests with `proptest` over the observation CSV parser, the
//! `bundle.toml` parser, NetCDF state reading (generated files) and C ABI argument validation, and a replay of the
//! committed corpus of nasty inputs (`tests/corpus/`). Every input must give an error or a valid result: never a
//! panic (proptest reports one as a failure, with the smallest input it can find) and never an abort (which would
//! kill this test binary).
//!
//! Bounded for CI: a fixed seed and a few hundred cases per property, about 20 s in all on two cores.
//! `LATENTDA_FUZZ_SEED=<u64>` changes the seed and `LATENTDA_FUZZ_SCALE=<k>` multiplies the case counts, for longer
//! runs by hand. Each property prints its case count and time (`cargo test --release --test fuzz -- --nocapture`).

mod common;

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::*;
use latentda::coupling::ffi::{self, LdaContext};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

fn runner(cases: u32) -> TestRunner {
    let scale: u32 = std::env::var("LATENTDA_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let seed: u64 = std::env::var("LATENTDA_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x1a7e_27da);
    TestRunner::new(Config {
        cases: cases * scale.max(1),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 200,
        ..Config::default()
    })
}

/// Runs a property, printing the case count and time.
fn fuzz<S: Strategy>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let n = AtomicUsize::new(0);
    let t = Instant::now();
    let r = runner(cases).run(&strategy, |v| {
        n.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    println!("fuzz {name}: {} cases in {:.2} s, no panic", n.load(Ordering::Relaxed), t.elapsed().as_secs_f64());
    if let Err(e) = r {
        panic!("fuzz {name}: {e}");
    }
}

fn corpus(dir: &str) -> Vec<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    assert!(!v.is_empty(), "empty corpus {}", d.display());
    v
}

fn layout() -> latentda::bundle::grid::Layout {
    latentda::bundle::Bundle::open(fixture("tanh")).unwrap().layout
}

// ---- observation CSV

/// A field: numbers of every kind, special values, names, junk.
fn csv_field() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|x| x.to_string()),
        (-100.0..400.0f64).prop_map(|x| format!("{x}")),
        (0.0..1.0f64).prop_map(|x| format!("{x:.3}")),
        prop::sample::select(vec![
            "",
            " ",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e309",
            "-1e309",
            "1e-320",
            "0",
            "-0",
            "0x10",
            "1_0",
            "--1",
            "+5",
            ".",
            "t",
            "u",
            "ps",
            "q",
            "zz",
            "T",
            "\"t\"",
            "#",
            "90",
            "-90",
            "90.0000001",
            "360",
            "-720",
            "1e300",
        ])
        .prop_map(String::from),
        "[ -~]{0,8}",
    ]
}

/// Near-valid CSV: an optional BOM, a header (mostly right), rows of 0..8 fields, mixed line ends, stray bytes.
fn csv_text() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        4 => Just("var,lat,lon,level,value,sigma".to_string()),
        1 => Just("VAR, Lat ,LON,level,value,sigma".to_string()),
        1 => "[a-z,]{0,30}",
    ];
    // Mostly plausible rows (so analyses use observations), some with one field replaced by junk.
    let plausible = (
        prop::sample::select(vec![("t", 250.0, 20.0), ("u", 5.0, 15.0), ("ps", 1.0e5, 2000.0)]),
        -95.0..95.0f64,
        -400.0..800.0f64,
        0.1..1.0f64,
        -1.0..1.0f64,
        prop_oneof![12 => 0.1..10.0f64, 1 => Just(1e-12), 1 => Just(0.0), 1 => Just(-1.0)],
        prop::option::weighted(0.2, (0..6usize, csv_field())),
    )
        .prop_map(|((v, mean, spread), lat, lon, lev, z, sigma, junk)| {
            let level = if v == "ps" { String::new() } else { format!("{lev:.3}") };
            let mut f = [
                v.to_string(),
                format!("{lat:.3}"),
                format!("{lon:.3}"),
                level,
                format!("{}", mean + spread * z),
                format!("{sigma}"),
            ];
            if let Some((k, j)) = junk {
                f[k] = j;
            }
            f.join(",")
        });
    let row = prop_oneof![
        8 => plausible,
        4 => (prop::sample::select(vec!["t", "u", "ps", "zz", ""]), csv_field(), csv_field(), csv_field(), csv_field(), csv_field())
            .prop_map(|(v, a, b, c, d, e)| format!("{v},{a},{b},{c},{d},{e}")),
        2 => prop::collection::vec(csv_field(), 0..9).prop_map(|f| f.join(",")),
        1 => Just("# comment".to_string()),
        1 => Just(String::new()),
    ];
    let eol = prop::sample::select(vec!["\n", "\r\n", "\r"]);
    (
        any::<bool>(),
        header,
        prop::collection::vec((row, eol), 0..24),
        prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
    )
        .prop_map(|(bom, h, rows, junk)| {
            let mut b: Vec<u8> = if bom { b"\xEF\xBB\xBF".to_vec() } else { vec![] };
            b.extend_from_slice(h.as_bytes());
            b.push(b'\n');
            for (r, e) in rows {
                b.extend_from_slice(r.as_bytes());
                b.extend_from_slice(e.as_bytes());
            }
            if let Some((i, byte)) = junk {
                let at = i.index(b.len() + 1);
                b.insert(at, byte);
            }
            b
        })
}

/// Checks a parse result: line numbers inside the text, one problem per malformed observation.
fn check_parse(
    bytes: &[u8],
    r: &latentda::Result<(Vec<latentda::Observation>, Vec<latentda::obs::RowProblem>)>,
) -> Result<(), TestCaseError> {
    let nlines = bytes.iter().filter(|&&b| b == b'\n' || b == b'\r').count() + 1;
    if let Ok((obs, problems)) = r {
        prop_assert_eq!(obs.iter().filter(|o| o.malformed.is_some()).count(), problems.len());
        for p in problems {
            prop_assert!(p.line >= 1 && p.line <= nlines, "line {} of {}", p.line, nlines);
            prop_assert!(p.message.contains(&format!("line {}", p.line)), "{}", p.message);
        }
    }
    Ok(())
}

/// The parser on arbitrary bytes and on near-valid CSV; every parsed set then goes through an analysis, which must
/// succeed whatever the observations (a bad observation is QC-flagged, never an error), with one exception: valid
/// but absurd observations (two surface pressures 1350 Pa apart a degree from each other, each with a 0.1 Pa error)
/// can ask the low-rank latent B for a field-wide increment larger than the divergence guard's 10 B standard
/// deviations; the analysis then fails with that guard's named error (docs/coupling.md, "Divergence guards"), which
/// must stay rare (at most 2 % of the analyses).
#[test]
fn fuzz_observation_csv() {
    let lay = layout();
    fuzz("csv bytes", 3000, prop::collection::vec(any::<u8>(), 0..300), |bytes| {
        let r = latentda::obs::parse_csv_bytes(&bytes, &lay);
        check_parse(&bytes, &r)
    });
    let b = fixture("tanh");
    let analyser = std::cell::RefCell::new(latentda::Analyser::open(&b, latentda::Options::default()).unwrap());
    let xb = latentda::bundle::ncio::read_state(&b.join("sample/background.nc"), &lay).unwrap();
    let (analyses, used, guarded) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    fuzz("csv text + analysis", 400, csv_text(), |bytes| {
        let r = latentda::obs::parse_csv_bytes(&bytes, &lay);
        check_parse(&bytes, &r)?;
        if let Ok((obs, _)) = r {
            if !obs.is_empty() {
                let a = analyser.borrow_mut().analyse(&xb, &obs, latentda::Method::L3dvar);
                if let Err(e) = &a {
                    if e.status == latentda::Status::Solver && e.message.starts_with("divergence guard 'increment'") {
                        guarded.fetch_add(1, Ordering::Relaxed);
                        analyses.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                }
                let a = a.map_err(|e| TestCaseError::fail(format!("analysis failed: {}", e.message)))?;
                prop_assert_eq!(a.qc.len(), obs.len());
                prop_assert!(a.analysis.iter().all(|x| x.is_finite()));
                analyses.fetch_add(1, Ordering::Relaxed);
                used.fetch_add(a.report.n_used, Ordering::Relaxed);
            }
        }
        Ok(())
    });
    let (n, g) = (analyses.load(Ordering::Relaxed), guarded.load(Ordering::Relaxed));
    println!(
        "  ({n} analyses, {} observations used in all, {g} refused by the increment guard)",
        used.load(Ordering::Relaxed)
    );
    assert!(g * 50 <= n, "{g} of {n} analyses refused by the increment guard");
}

// ---- bundle.toml

#[derive(Debug, Clone)]
enum Edit {
    /// Replace the n-th number by a token.
    Number(prop::sample::Index, &'static str),
    /// Replace the n-th quoted string by another.
    Text(prop::sample::Index, String),
    DeleteLine(prop::sample::Index),
    DuplicateLine(prop::sample::Index),
    FlipByte(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
}

fn manifest_edit() -> impl Strategy<Value = Edit> {
    let tokens = prop::sample::select(vec![
        "-1",
        "0",
        "1",
        "2",
        "3",
        "4",
        "1e400",
        "nan",
        "inf",
        "-inf",
        "\"x\"",
        "[]",
        "[0]",
        "3.5",
        "99999999999",
        "18446744073709551616",
        "0.0000001",
        "-90.5",
        "true",
        "{}",
    ]);
    let texts = prop_oneof![
        prop::sample::select(vec![
            "",
            "../x",
            "/dev/zero",
            "a\\u0000b",
            "encoder.onnx",
            "decoder.onnx",
            "baseline_b.nc",
            "sample/obs.csv",
            "regular",
            "pressure",
            "sigma",
            "u",
            "t",
            "ps",
            "latentda-bundle",
            ".",
            "..",
            "x/../y",
        ])
        .prop_map(String::from),
        "[a-z_./]{0,12}",
        Just("v".repeat(300)),
    ];
    prop_oneof![
        4 => (any::<prop::sample::Index>(), tokens).prop_map(|(i, t)| Edit::Number(i, t)),
        3 => (any::<prop::sample::Index>(), texts).prop_map(|(i, t)| Edit::Text(i, t)),
        2 => any::<prop::sample::Index>().prop_map(Edit::DeleteLine),
        1 => any::<prop::sample::Index>().prop_map(Edit::DuplicateLine),
        2 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::FlipByte(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
}

/// Byte ranges `[start, end)` in a text.
type Spans = Vec<(usize, usize)>;

/// Byte ranges of the numbers and of the quoted strings of a TOML text.
fn spans(text: &str) -> (Spans, Spans) {
    let b = text.as_bytes();
    let (mut nums, mut strs) = (vec![], vec![]);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let j = b[i + 1..].iter().position(|&c| c == b'"').map_or(b.len(), |k| i + 1 + k);
            strs.push((i + 1, j));
            i = j + 1;
        } else if b[i].is_ascii_digit() || (b[i] == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let j = i + b[i..]
                .iter()
                .position(|&c| !(c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'+'))
                .unwrap_or(b.len() - i);
            nums.push((i, j));
            i = j;
        } else {
            i += 1;
        }
    }
    (nums, strs)
}

/// A byte-level edit (flip, truncate) on `b`; `false` for the text-level edits.
fn byte_edit(b: &mut Vec<u8>, e: &Edit) -> bool {
    match e {
        Edit::FlipByte(i, x) => {
            if !b.is_empty() {
                let k = i.index(b.len());
                b[k] ^= x | 1;
            }
            true
        }
        Edit::Truncate(i) => {
            b.truncate(i.index(b.len() + 1));
            true
        }
        _ => false,
    }
}

fn apply(text: &str, edits: &[Edit]) -> Vec<u8> {
    let mut t = text.to_string();
    let mut bytes: Option<Vec<u8>> = None;
    for e in edits {
        // after a byte edit the text may not be UTF-8: only byte edits from there on
        if let Some(b) = &mut bytes {
            byte_edit(b, e);
            continue;
        }
        let mut b = t.clone().into_bytes();
        if byte_edit(&mut b, e) {
            bytes = Some(b);
            continue;
        }
        let (nums, strs) = spans(&t);
        let lines: Vec<&str> = t.lines().collect();
        t = match e {
            Edit::Number(i, tok) if !nums.is_empty() => {
                let (a, z) = nums[i.index(nums.len())];
                format!("{}{}{}", &t[..a], tok, &t[z..])
            }
            Edit::Text(i, s) if !strs.is_empty() => {
                let (a, z) = strs[i.index(strs.len())];
                format!("{}{}{}", &t[..a], s, &t[z..])
            }
            Edit::DeleteLine(i) if !lines.is_empty() => {
                let k = i.index(lines.len());
                lines.iter().enumerate().filter(|(j, _)| *j != k).map(|(_, l)| format!("{l}\n")).collect()
            }
            Edit::DuplicateLine(i) if !lines.is_empty() => {
                let k = i.index(lines.len());
                lines
                    .iter()
                    .enumerate()
                    .flat_map(|(j, l)| if j == k { vec![*l, *l] } else { vec![*l] })
                    .map(|l| format!("{l}\n"))
                    .collect()
            }
            _ => t,
        };
    }
    bytes.unwrap_or_else(|| t.into_bytes())
}

/// Opens a bundle directory the way a host does (manifest, checksums, statistics, the four graphs) and, when it
/// opens, runs an analysis on its mean state with three observations: errors are fine, panics are not.
fn open_and_use(dir: &Path) -> Result<bool, TestCaseError> {
    let Ok(mut a) = latentda::Analyser::open(dir, latentda::Options::default()) else { return Ok(false) };
    let xb = a.bundle.mean_state();
    let lay = a.bundle.layout.clone();
    let mk = |v: usize, lat: f64, level: Option<f64>| latentda::Observation {
        var: Some(v),
        var_name: String::new(),
        lat,
        lon: 30.0,
        level,
        value: xb[lay.var_range(v).start] + 1.0,
        sigma: 1.0,
        line: None,
        time: 0.0,
        malformed: None,
    };
    let lev = lay.vertical.levels[lay.vertical.levels.len() / 2];
    let obs: Vec<_> =
        (0..lay.variables.len()).map(|v| mk(v, 10.0, (!lay.variables[v].is_surface()).then_some(lev))).collect();
    let _ = a.analyse(&xb, &obs, latentda::Method::L3dvar);
    Ok(true)
}

/// Mutated manifests of the tanh fixture (1 to 4 edits: numbers, strings, lines, bytes): every one opens or gives a
/// bundle error; those that open also analyse or fail cleanly.
#[test]
fn fuzz_bundle_manifest() {
    let text = std::fs::read_to_string(fixture("tanh").join("bundle.toml")).unwrap();
    let dir = copy_fixture("tanh", "fuzz_manifest");
    let opened = AtomicUsize::new(0);
    fuzz("bundle.toml", 300, prop::collection::vec(manifest_edit(), 1..5), |edits| {
        std::fs::write(dir.join("bundle.toml"), apply(&text, &edits)).unwrap();
        if open_and_use(&dir)? {
            opened.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    println!("  ({} of the mutated bundles opened)", opened.load(Ordering::Relaxed));
}

// ---- NetCDF state files

#[derive(Debug, Clone)]
struct VarTweak {
    kind: NcKind,
    fill: Option<f64>,
    attrs: Vec<(&'static str, Vec<f64>)>,
    drop: bool,
    never_written: bool,
    poke: Option<(prop::sample::Index, f64)>,
}

fn var_tweak() -> impl Strategy<Value = VarTweak> {
    let none = VarTweak { kind: NcKind::F64, fill: None, attrs: vec![], drop: false, never_written: false, poke: None };
    prop_oneof![4 => Just(none), 1 => any_var_tweak()]
}

fn any_var_tweak() -> impl Strategy<Value = VarTweak> {
    let attr = prop_oneof![
        (
            prop::sample::select(vec!["scale_factor", "add_offset", "missing_value", "valid_min", "valid_max"]),
            prop_oneof![Just(0.0), Just(1.0), Just(-1.0), Just(f64::NAN), Just(1e300), -500.0..500.0f64]
        )
            .prop_map(|(k, v)| (k, vec![v])),
        (-400.0..400.0f64, -400.0..400.0f64).prop_map(|(a, b)| ("valid_range", vec![a.min(b), a.max(b)])),
        Just(("valid_range", vec![1.0])),
        Just(("missing_value", vec![])),
    ];
    (
        prop::sample::select(vec![NcKind::F64, NcKind::F64, NcKind::F32, NcKind::I16]),
        prop::option::weighted(0.3, prop_oneof![Just(-999.0), Just(0.0), Just(f64::NAN), -300.0..300.0f64]),
        prop::collection::vec(attr, 0..3),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.05),
        prop::option::weighted(
            0.2,
            (
                any::<prop::sample::Index>(),
                prop_oneof![
                    Just(f64::NAN),
                    Just(f64::INFINITY),
                    Just(-999.0),
                    Just(9.969209968386869e36),
                    any::<f64>()
                ],
            ),
        ),
    )
        .prop_map(|(kind, fill, attrs, drop, never_written, poke)| VarTweak {
            kind,
            fill,
            attrs,
            drop,
            never_written,
            poke,
        })
}

#[derive(Debug, Clone)]
struct NcCase {
    classic: bool,
    tweaks: Vec<VarTweak>,
    /// Resize one dimension (lev, lat, lon) by this much.
    dim: Option<(prop::sample::Index, i8)>,
    /// Keep this fraction of the file's bytes.
    truncate: Option<f64>,
}

fn nc_case() -> impl Strategy<Value = NcCase> {
    (
        any::<bool>(),
        prop::collection::vec(var_tweak(), 6),
        prop::option::weighted(0.05, (any::<prop::sample::Index>(), prop_oneof![Just(-1i8), Just(1i8)])),
        prop::option::weighted(0.1, 0.0..1.0f64),
    )
        .prop_map(|(classic, tweaks, dim, truncate)| NcCase { classic, tweaks, dim, truncate })
}

/// Generated state files (any of the three storage types, fill values, packing, missing values, valid ranges,
/// dropped or never-written variables, poked values, resized dimensions, truncation, classic or NetCDF-4): every
/// one reads or gives an error; what reads is finite and has the state's length, and a file with no changes reads
/// back exactly.
#[test]
fn fuzz_netcdf_state_reading() {
    let lay = layout();
    let (dims0, vars0) = fixture_state_vars("tanh");
    let orig = latentda::bundle::ncio::read_state(&fixture("tanh").join("sample/background.nc"), &lay).unwrap();
    let dir = scratch("fuzz_netcdf");
    let path = dir.join("state.nc");
    let (read_ok, pristine_ok) = (AtomicUsize::new(0), AtomicUsize::new(0));
    fuzz("netcdf state", 400, nc_case(), |case| {
        let mut dims = dims0.clone();
        if let Some((i, d)) = case.dim {
            let k = i.index(dims.len());
            dims[k].1 = (dims[k].1 as i64 + d as i64).max(1) as usize;
        }
        let mut vars = Vec::new();
        let mut pristine = case.dim.is_none() && case.truncate.is_none();
        for (v, t) in vars0.iter().zip(&case.tweaks) {
            if t.drop {
                pristine = false;
                continue;
            }
            let mut v = v.clone();
            let n: usize = v.dims.iter().map(|d| dims.iter().find(|x| &x.0 == d).unwrap().1).product();
            let mut data = v.data.take().unwrap();
            data.resize(n, 1.0);
            if let Some((i, x)) = t.poke {
                let k = i.index(n);
                data[k] = x;
                pristine = false;
            }
            if t.kind != NcKind::F64 || t.fill.is_some() || !t.attrs.is_empty() || t.never_written {
                pristine = false;
            }
            v.kind = t.kind;
            if t.kind == NcKind::I16 {
                data.iter_mut().for_each(|x| *x = x.clamp(-32768.0, 32767.0).round());
            }
            v.fill = t.fill.filter(|f| t.kind != NcKind::I16 || f.is_finite());
            v.attrs = t.attrs.iter().filter(|(_, a)| !a.is_empty()).map(|(k, a)| (k.to_string(), a.clone())).collect();
            v.data = (!t.never_written).then_some(data);
            vars.push(v);
        }
        let _ = std::fs::remove_file(&path);
        if write_nc(&path, case.classic, &dims, &vars).is_err() {
            return Ok(()); // a combination NetCDF itself refuses to write
        }
        if let Some(f) = case.truncate {
            let b = std::fs::read(&path).unwrap();
            std::fs::write(&path, &b[..(b.len() as f64 * f) as usize]).unwrap();
        }
        match latentda::bundle::ncio::read_state(&path, &lay) {
            Ok(x) => {
                read_ok.fetch_add(1, Ordering::Relaxed);
                prop_assert_eq!(x.len(), lay.state_len());
                prop_assert!(x.iter().all(|v| v.is_finite()));
                if pristine {
                    prop_assert!(x == orig, "an unchanged file reads back differently");
                    pristine_ok.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                prop_assert!(!e.message.is_empty());
                prop_assert!(!pristine, "an unchanged file was refused: {}", e.message);
            }
        }
        Ok(())
    });
    println!(
        "  ({} of the generated files read, {} of them unchanged and read back exactly)",
        read_ok.load(Ordering::Relaxed),
        pristine_ok.load(Ordering::Relaxed)
    );
}

// ---- C ABI argument validation

#[derive(Debug, Clone)]
enum Call {
    /// A bind with the right shape for the variable (so that analyses can run).
    BindGood {
        var: usize,
        buf: usize,
        offset: usize,
        f32: bool,
        fortran: bool,
    },
    Bind {
        var: Option<&'static str>,
        buf: usize,
        offset: usize,
        f32: bool,
        ndim: i32,
        shape: [i64; 4],
        order: i32,
    },
    SetObs {
        n: usize,
        null: Option<usize>,
        var: Vec<i32>,
        vals: Vec<f64>,
    },
    Analyse(Option<&'static str>),
    ObsQc {
        n: usize,
        null: bool,
    },
    Report {
        len: usize,
        null: bool,
    },
    Number(Option<&'static str>),
    VarIndex(Option<&'static str>),
    /// `lda_bsqrt` or `lda_bsqrt_ad`, lengths one off or right; outputs NULL (the bound arrays), separate, in the input's
    /// buffer, or in a host buffer that bound arrays live in.
    Bsqrt {
        dv: i8,
        dx: i8,
        out: u8,
        ad: bool,
    },
    /// `lda_bvariance` (`rand` false) or `lda_brandomize`: output NULL (the bound arrays), separate, or in a host
    /// buffer that bound arrays live in; its length one off or right.
    BStat {
        rand: bool,
        seed: u64,
        dx: i8,
        out: u8,
        buf: usize,
    },
    Linearise,
    Sizes {
        null: bool,
    },
}

fn call() -> impl Strategy<Value = Call> {
    let names = prop::option::weighted(0.9, prop::sample::select(vec!["u", "t", "ps", "q", "", "U", "t "]));
    let dim = prop::sample::select(vec![0i64, 1, 2, 3, 8, 16, -1, 4, i64::MAX, 128]);
    let num = prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-1.0),
        Just(0.0),
        Just(1e-300),
        -200.0..400.0f64,
        0.1..1.0f64,
        9e4..1.1e5f64
    ];
    prop_oneof![
        6 => (0..3usize, 0..4usize, prop_oneof![Just(0usize), 0..200usize], any::<bool>(), any::<bool>())
            .prop_map(|(var, buf, offset, f32, fortran)| Call::BindGood { var, buf, offset, f32, fortran }),
        3 => (names.clone(), 0..4usize, 0..200usize, any::<bool>(), prop_oneof![Just(2), Just(3), -1..6i32], [dim.clone(), dim.clone(), dim.clone(), dim],
              prop_oneof![Just(0), Just(1), -1..4i32])
            .prop_map(|(var, buf, offset, f32, ndim, shape, order)| Call::Bind { var, buf, offset, f32, ndim, shape, order }),
        3 => (0..6usize, prop::option::weighted(0.15, 0..6usize), prop::collection::vec(-2..5i32, 6), prop::collection::vec(num, 30))
            .prop_map(|(n, null, var, vals)| Call::SetObs { n, null, var, vals }),
        3 => prop::option::of(prop::sample::select(vec!["l3dvar", "3dvar", "hybrid", "", "bogus", "L3DVAR"])).prop_map(Call::Analyse),
        1 => (0..8usize, prop::bool::weighted(0.1)).prop_map(|(n, null)| Call::ObsQc { n, null }),
        1 => (0..6000usize, prop::bool::weighted(0.2)).prop_map(|(len, null)| Call::Report { len, null }),
        1 => prop::option::weighted(0.9, prop::sample::select(vec!["n_used", "", ".", "solver.j_final", "variables.t.omb_rms", "variables.9.x", "qc_counts", "method", "a..b"])).prop_map(Call::Number),
        1 => names.prop_map(Call::VarIndex),
        2 => (-1..2i8, -1..2i8, 0..5u8, any::<bool>()).prop_map(|(dv, dx, out, ad)| Call::Bsqrt { dv, dx, out, ad }),
        2 => (any::<bool>(), 0..4u64, -1..2i8, 0..3u8, 0..4usize)
            .prop_map(|(rand, seed, dx, out, buf)| Call::BStat { rand, seed, dx, out, buf }),
        1 => Just(Call::Linearise),
        1 => prop::bool::weighted(0.2).prop_map(|null| Call::Sizes { null }),
    ]
}

/// Three plausible observations (u, t, ps) in the column layout of `Call::SetObs`: lat, lon, level, value, sigma.
fn setup_obs() -> Vec<f64> {
    let mut v = vec![30.0, -20.0, 10.0, 0.0, 0.0, 100.0, 200.0, 50.0, 0.0, 0.0, 0.5, 0.85, f64::NAN, 0.0, 0.0];
    v.extend([7.0, 257.0, 100100.0, 0.0, 0.0, 1.0, 0.5, 50.0, 0.0, 0.0]);
    v
}

fn cstr(s: Option<&str>) -> Option<CString> {
    s.map(|s| CString::new(s).unwrap())
}

fn ptr(c: &Option<CString>) -> *const c_char {
    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// Random call sequences on a fresh context (B operator latent, hybrid or static) with random arguments (names,
/// NULLs, ndim, shapes, orders, buffers that overlap, observation counts and values, lengths one off, methods, report
/// paths, B operator outputs in bound memory): every status is a documented one and never LDA_ERR_INTERNAL (a caught
/// panic), `lda_last_error` always gives a string, and a failing call leaves the host arrays bit-identical.
#[test]
fn fuzz_c_abi_arguments() {
    let b = CString::new(fixture("tanh").to_str().unwrap()).unwrap();
    let lay = layout();
    let big = 4 * lay.var_range(0).len().max(lay.var_range(2).len()) + 256;
    let (calls, analysed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    // Most sequences start by binding every variable correctly, so that analyses and the B operator run.
    let setup = prop::collection::vec((0..4usize, any::<bool>(), any::<bool>()), 3);
    // The B operator served to the host: the control size, and which operators run, depend on it.
    let b_ops = [None, cstr(Some("b_operator = \"hybrid\"")), cstr(Some("b_operator = \"static\""))];
    let kinds = AtomicUsize::new(0);
    // Successful B operator calls per kind: the hybrid and static paths must really run, not only fail.
    let b_ok: [AtomicUsize; 3] = Default::default();
    let seqs = (0..3usize, prop::option::weighted(0.7, setup), prop::collection::vec(call(), 1..14)).prop_map(
        |(op, setup, mut calls)| {
            if let Some(s) = setup {
                let binds = s.into_iter().enumerate().map(|(var, (buf, f32, fortran))| Call::BindGood {
                    var,
                    buf: (buf + var) % 4,
                    offset: 0,
                    f32,
                    fortran,
                });
                calls.splice(
                    0..0,
                    binds.chain([Call::SetObs { n: 3, null: None, var: vec![0, 1, 2, 0, 1, 2], vals: setup_obs() }]),
                );
            }
            (op, calls)
        },
    );
    fuzz("C ABI sequences", 300, seqs, |(op, seq)| {
        let mut ctx: *mut LdaContext = std::ptr::null_mut();
        prop_assert_eq!(ffi::lda_open(b.as_ptr(), ptr(&b_ops[op]), &mut ctx), ffi::LDA_OK);
        kinds.fetch_or(1 << op, Ordering::Relaxed);
        // Four host buffers, each large enough for any variable at any offset used; doubles, viewed as floats too.
        let mut bufs: Vec<Vec<f64>> =
            (0..4).map(|k| (0..big).map(|i| 100.0 + (i * (k + 1)) as f64 % 7.0).collect()).collect();
        let (mut nv, mut nx) = (0usize, 0usize);
        prop_assert_eq!(ffi::lda_control_size(ctx, &mut nv), ffi::LDA_OK);
        prop_assert_eq!(ffi::lda_state_size(ctx, &mut nx), ffi::LDA_OK);
        prop_assert!(nx < big, "state size {} does not fit a host buffer of {}", nx, big);
        for c in seq {
            calls.fetch_add(1, Ordering::Relaxed);
            let before = bufs.clone();
            let st = match &c {
                Call::BindGood { var, buf, offset, f32, fortran } => {
                    let v = &lay.variables[*var];
                    let name = CString::new(v.name.as_str()).unwrap();
                    let mut shape: Vec<i64> = if v.is_surface() { vec![] } else { vec![v.nlev as i64] };
                    shape.extend([lay.grid.nlat() as i64, lay.grid.nlon() as i64]);
                    if *fortran {
                        shape.reverse();
                    }
                    let order = if *fortran { ffi::LDA_ORDER_FORTRAN } else { ffi::LDA_ORDER_C };
                    // SAFETY: offset < 200 and every buffer has room for a variable after it.
                    let p = unsafe { bufs[*buf].as_mut_ptr().add(*offset) };
                    let nd = shape.len() as i32;
                    if *f32 {
                        ffi::lda_bind_field_f32(ctx, name.as_ptr(), p as *mut f32, nd, shape.as_ptr(), order)
                    } else {
                        ffi::lda_bind_field_f64(ctx, name.as_ptr(), p, nd, shape.as_ptr(), order)
                    }
                }
                Call::Bind { var, buf, offset, f32, ndim, shape, order } => {
                    let name = cstr(*var);
                    let p = bufs[*buf].as_mut_ptr();
                    // SAFETY: offset < 200 and every buffer has room for a variable after it.
                    let p = unsafe { p.add(*offset) };
                    if *f32 {
                        ffi::lda_bind_field_f32(ctx, ptr(&name), p as *mut f32, *ndim, shape.as_ptr(), *order)
                    } else {
                        ffi::lda_bind_field_f64(ctx, ptr(&name), p, *ndim, shape.as_ptr(), *order)
                    }
                }
                Call::SetObs { n, null, var, vals } => {
                    let col = |k: usize| -> *const f64 {
                        if *null == Some(k + 1) {
                            std::ptr::null()
                        } else {
                            vals[5 * k..].as_ptr()
                        }
                    };
                    let v = if *null == Some(0) { std::ptr::null() } else { var.as_ptr() };
                    ffi::lda_set_obs(ctx, *n, v, col(0), col(1), col(2), col(3), col(4))
                }
                Call::Analyse(m) => {
                    let m = cstr(*m);
                    ffi::lda_analyse(ctx, ptr(&m))
                }
                Call::ObsQc { n, null } => {
                    let mut f = vec![-7i32; *n];
                    ffi::lda_obs_qc(ctx, if *null { std::ptr::null_mut() } else { f.as_mut_ptr() }, *n)
                }
                Call::Report { len, null } => {
                    let mut buf = vec![0 as c_char; *len];
                    let mut need = 0usize;
                    let st = ffi::lda_report_json(
                        ctx,
                        if *null { std::ptr::null_mut() } else { buf.as_mut_ptr() },
                        *len,
                        &mut need,
                    );
                    if st == ffi::LDA_OK {
                        // SAFETY: on success the buffer holds a NUL-terminated string of `need` bytes.
                        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
                        prop_assert_eq!(s.to_bytes().len() + 1, need);
                        prop_assert!(serde_json::from_slice::<serde_json::Value>(s.to_bytes()).is_ok());
                    }
                    st
                }
                Call::Number(path) => {
                    let p = cstr(*path);
                    let mut x = 0.0;
                    ffi::lda_report_number(ctx, ptr(&p), &mut x)
                }
                Call::VarIndex(name) => {
                    let n = cstr(*name);
                    let mut i = 0;
                    ffi::lda_var_index(ctx, ptr(&n), &mut i)
                }
                Call::Bsqrt { dv, dx, out, ad } => {
                    let (lv, lx) = ((nv as i64 + *dv as i64) as usize, (nx as i64 + *dx as i64) as usize);
                    let mut v: Vec<f64> = (0..nv + 1).map(|i| (i as f64).sin()).collect();
                    let mut x = vec![0.5; nx + 1];
                    match (*ad, *out) {
                        (false, 0) => ffi::lda_bsqrt(ctx, v.as_ptr(), lv, std::ptr::null_mut(), 0),
                        (false, 1) => ffi::lda_bsqrt(ctx, v.as_ptr(), lv, x.as_mut_ptr(), lx),
                        (false, 4) => {
                            // x_out in a host buffer that bound arrays may live in (a failing call must not write)
                            ffi::lda_bsqrt(ctx, v.as_ptr(), lv, bufs[1].as_mut_ptr(), lx)
                        }
                        (false, _) => {
                            // v and x_out in one buffer
                            let mut one = vec![0.25; nv.max(nx) + 1];
                            ffi::lda_bsqrt(ctx, one.as_ptr(), lv, one.as_mut_ptr(), lx)
                        }
                        (true, 0) => ffi::lda_bsqrt_ad(ctx, std::ptr::null(), 0, v.as_mut_ptr(), lv),
                        (true, 4) => {
                            // x and v_out in a host buffer that bound arrays may live in
                            let p = bufs[2].as_mut_ptr();
                            ffi::lda_bsqrt_ad(ctx, p, lx, p, lv)
                        }
                        (true, _) => ffi::lda_bsqrt_ad(ctx, x.as_ptr(), lx, v.as_mut_ptr(), lv),
                    }
                }
                Call::BStat { rand, seed, dx, out, buf } => {
                    let lx = (nx as i64 + *dx as i64) as usize;
                    let mut x = vec![0.5; nx + 1];
                    let p = match out {
                        0 => std::ptr::null_mut(),
                        1 => x.as_mut_ptr(),
                        _ => bufs[*buf].as_mut_ptr(),
                    };
                    if *rand {
                        ffi::lda_brandomize(ctx, *seed, p, lx)
                    } else {
                        ffi::lda_bvariance(ctx, p, lx)
                    }
                }
                Call::Linearise => ffi::lda_b_linearise(ctx),
                Call::Sizes { null } => {
                    let mut n = 0usize;
                    ffi::lda_control_size(ctx, if *null { std::ptr::null_mut() } else { &mut n })
                }
            };
            prop_assert!((0..=10).contains(&st), "{:?}: status {}", c, st);
            if st == ffi::LDA_OK && matches!(c, Call::Analyse(_)) {
                analysed.fetch_add(1, Ordering::Relaxed);
            }
            if st == ffi::LDA_OK && matches!(c, Call::Bsqrt { .. } | Call::BStat { .. }) {
                b_ok[op].fetch_add(1, Ordering::Relaxed);
            }
            prop_assert_ne!(st, ffi::LDA_ERR_INTERNAL, "{:?}", c);
            // SAFETY: never NULL; copied at once.
            let msg = unsafe { CStr::from_ptr(ffi::lda_last_error(ctx)) }.to_string_lossy().into_owned();
            if st != ffi::LDA_OK {
                prop_assert!(!msg.is_empty(), "{:?}: status {} without a message", c, st);
                let same = bufs.iter().flatten().zip(before.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(same, "{:?}: a failing call (status {}: {}) wrote host memory", c, st, msg);
            }
        }
        prop_assert_eq!(ffi::lda_close(ctx), ffi::LDA_OK);
        Ok(())
    });
    assert_eq!(kinds.load(Ordering::Relaxed), 0b111, "not every B operator kind was fuzzed");
    let b_ok = b_ok.map(|n| n.into_inner());
    assert!(b_ok.iter().all(|&n| n > 0), "successful B operator calls (latent, hybrid, static): {b_ok:?}");
    println!(
        "  ({} calls, {} successful analyses, successful B operator calls latent/hybrid/static {b_ok:?})",
        calls.load(Ordering::Relaxed),
        analysed.load(Ordering::Relaxed)
    );
}

// ---- the committed corpus

/// Every committed nasty input (tests/corpus/README.md): observation files, manifests and state files give an
/// error or a valid result, never a panic; the ones the issue names give the error it asks for.
#[test]
fn corpus_replays_without_panics() {
    let lay = layout();
    let t = Instant::now();
    let mut n = 0;
    for p in corpus("csv") {
        let r = latentda::obs::read_csv(&p, &lay);
        let bytes = std::fs::read(&p).unwrap();
        check_parse(&bytes, &r).unwrap();
        n += 1;
    }
    let csv = |f: &str| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/csv").join(f);
    let (obs, problems) = latentda::obs::read_csv(&csv("bom_crlf.csv"), &lay).unwrap();
    assert!(obs.len() == 2 && problems.is_empty(), "{problems:?}");
    let (_, problems) = latentda::obs::read_csv(&csv("bad_bytes.csv"), &lay).unwrap();
    assert_eq!(problems.iter().map(|p| p.line).collect::<Vec<_>>(), vec![3, 4]);
    let dir = copy_fixture("tanh", "corpus_manifest");
    for p in corpus("manifest") {
        std::fs::copy(&p, dir.join("bundle.toml")).unwrap();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        let r = latentda::Analyser::open(&dir, latentda::Options::default());
        match r {
            Ok(_) => panic!("corpus manifest {name} opened"),
            Err(e) => {
                assert!(!e.message.is_empty(), "{name}");
                // The hybrid B's keys (issue 12) are checked at open: a value the parser takes but latentda refuses
                // names the key; a wrong type or unknown key is a TOML error pointing at its line.
                for key in ["hybrid", "baseline_variance_factor"] {
                    if name.starts_with(key) {
                        let toml = e.message.contains("TOML parse error at line");
                        assert!(toml || e.message.contains(key), "{name}: {}", e.message);
                    }
                }
            }
        }
        n += 1;
    }
    for p in corpus("netcdf") {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let r = latentda::bundle::ncio::read_state(&p, &lay);
        assert_eq!(r.is_ok(), name.ends_with("_ok.nc"), "{name}: {:?}", r.err().map(|e| e.message));
        n += 1;
    }
    // Absurd statistics (issue 25): each replaces its bundle file (checksum rewritten) and must be a bundle error
    // naming the file and the channel or index.
    let sdir = copy_fixture("tanh", "corpus_statistics");
    let manifest = std::fs::read(sdir.join("bundle.toml")).unwrap();
    for p in corpus("statistics") {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let target = format!("{}.nc", name.split('.').next().unwrap());
        let clean = std::fs::read(sdir.join(&target)).unwrap();
        std::fs::copy(&p, sdir.join(&target)).unwrap();
        refresh_checksum(&sdir, &target);
        let e = latentda::Analyser::open(&sdir, latentda::Options::default())
            .err()
            .unwrap_or_else(|| panic!("{name} opened"));
        assert_eq!(e.status, latentda::Status::Bundle, "{name}: {}", e.message);
        let named = e.message.contains("channel ") || e.message.contains("variance[7]");
        assert!(e.message.contains(&target) && named, "{name}: {}", e.message);
        std::fs::write(sdir.join(&target), clean).unwrap();
        std::fs::write(sdir.join("bundle.toml"), &manifest).unwrap();
        n += 1;
    }
    println!("corpus: {n} inputs in {:.2} s, no panic", t.elapsed().as_secs_f64());
}

// ---- flipped graphs with a valid checksum (issue 25, items 1 and 7)

/// The graphs of the tanh fixture that the flip fuzz corrupts, and the method whose analysis uses them.
const FLIP_GRAPHS: [(&str, latentda::Method); 7] = [
    ("decoder_tl.onnx", latentda::Method::L3dvar),
    ("decoder_ad.onnx", latentda::Method::L3dvar),
    ("encoder.onnx", latentda::Method::L3dvar),
    ("decoder.onnx", latentda::Method::L3dvar),
    ("step.onnx", latentda::Method::L4dvar),
    ("step_tl.onnx", latentda::Method::L4dvar),
    ("step_ad.onnx", latentda::Method::L4dvar),
];

/// A uniform index below `n` from the crate's SplitMix64 generator (the flip positions and masks).
fn below(rng: &mut latentda::diag::checks::Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// `bytes` with `count` random bytes XORed with random non-zero masks (positions may repeat); returns the edits.
fn flip(bytes: &[u8], rng: &mut latentda::diag::checks::Rng, count: usize) -> (Vec<u8>, Vec<(usize, u8)>) {
    let mut b = bytes.to_vec();
    let mut edits = Vec::new();
    for _ in 0..count {
        let (i, m) = (below(rng, b.len()), 1 + below(rng, 255) as u8);
        b[i] ^= m;
        edits.push((i, m));
    }
    (b, edits)
}

/// What one corrupted bundle gave.
#[derive(Debug)]
enum FlipOutcome {
    /// Refused at open (the message).
    OpenError(String),
    /// Opened; the analysis failed (the message).
    AnalyseError(String),
    /// An analysis was returned: Ok if it passes the oracle, else why not.
    Accepted(Result<(), String>),
}

/// The oracle for an analysis that was returned: every value finite, inside the bundle's `[bounds]` if it declares
/// any and within 10 normalisation standard deviations of the background (the fixture's background errors are
/// about 0.2 of them), and J lower at the analysis than at the background.
fn flip_oracle(a: &latentda::Analyser, x_b: &[f64], r: &latentda::Analysis) -> Result<(), String> {
    let lay = &a.bundle.layout;
    let np = lay.grid.npoints();
    if let Some(i) = r.analysis.iter().position(|v| !v.is_finite()) {
        return Err(format!("non-finite analysis {} at {}", r.analysis[i], lay.describe_index(i)));
    }
    for (i, (xa, xb)) in r.analysis.iter().zip(x_b).enumerate() {
        let sd = a.bundle.std[i / np];
        if (xa - xb).abs() > 10.0 * sd {
            return Err(format!("increment {:.3e} at {} is more than 10 std ({sd})", xa - xb, lay.describe_index(i)));
        }
    }
    for (v, b) in a.bundle.bounds.iter().enumerate() {
        if let Some([lo, hi]) = b {
            if let Some(i) = lay.var_range(v).find(|&i| !(r.analysis[i] >= *lo && r.analysis[i] <= *hi)) {
                return Err(format!(
                    "analysis {} at {} outside the bundle's bounds [{lo}, {hi}]",
                    r.analysis[i],
                    lay.describe_index(i)
                ));
            }
        }
    }
    let s = r.report.solver.as_ref().ok_or("the report has no solver section")?;
    // NaN fails too
    if s.j_final.partial_cmp(&s.j_initial) != Some(std::cmp::Ordering::Less) {
        return Err(format!("J did not decrease: {:.6e} -> {:.6e}", s.j_initial, s.j_final));
    }
    Ok(())
}

/// Opens `dir` with `options` and, when it opens, analyses the fixture's sample case with `method`.
fn open_and_analyse(dir: &Path, options: latentda::Options, method: latentda::Method) -> FlipOutcome {
    let mut a = match latentda::Analyser::open(dir, options) {
        Ok(a) => a,
        Err(e) => return FlipOutcome::OpenError(e.message),
    };
    let lay = a.bundle.layout.clone();
    let x_b = latentda::bundle::ncio::read_state(&dir.join("sample/background.nc"), &lay).unwrap();
    let csv = if method == latentda::Method::L4dvar { "sample/obs_4d.csv" } else { "sample/obs.csv" };
    let (obs, _) = latentda::obs::read_csv(&dir.join(csv), &lay).unwrap();
    match a.analyse(&x_b, &obs, method) {
        Err(e) => FlipOutcome::AnalyseError(e.message),
        Ok(r) => FlipOutcome::Accepted(flip_oracle(&a, &x_b, &r)),
    }
}

/// Counts of one flip-fuzz run.
#[derive(Debug, Default)]
struct FlipCounts {
    runs: usize,
    open_errors: usize,
    self_test_errors: usize,
    analyse_errors: usize,
    accepted: usize,
    /// Accepted analyses that fail the oracle: (case, why).
    violations: Vec<String>,
}

/// Corrupts each graph of the tanh fixture `per_graph` times (1 to 40 random bytes XORed, seeded), rewrites its
/// checksum so only the content is wrong, opens the bundle with `options` and analyses the sample case.
fn flip_fuzz(test: &str, per_graph: usize, options: &latentda::Options) -> FlipCounts {
    let scale: usize = std::env::var("LATENTDA_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let seed: u64 = std::env::var("LATENTDA_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x1a7e_27da);
    let dir = copy_fixture("tanh", test);
    let manifest = std::fs::read(dir.join("bundle.toml")).unwrap();
    let mut c = FlipCounts::default();
    let t = Instant::now();
    for (g, (file, method)) in FLIP_GRAPHS.iter().enumerate() {
        let clean = std::fs::read(dir.join(file)).unwrap();
        for k in 0..per_graph * scale.max(1) {
            let mut rng = latentda::diag::checks::Rng::new(seed ^ ((g as u64) << 32) ^ k as u64);
            let count = [1, 2, 4, 8, 16, 40][below(&mut rng, 6)];
            let (bytes, edits) = flip(&clean, &mut rng, count);
            std::fs::write(dir.join(file), &bytes).unwrap();
            refresh_checksum(&dir, file);
            c.runs += 1;
            match open_and_analyse(&dir, options.clone(), *method) {
                FlipOutcome::OpenError(m) => {
                    c.open_errors += 1;
                    if m.contains("known-answer self-test") {
                        c.self_test_errors += 1;
                    }
                }
                FlipOutcome::AnalyseError(m) => {
                    assert!(!m.is_empty(), "{file} case {k}: an analysis error without a message");
                    c.analyse_errors += 1
                }
                FlipOutcome::Accepted(r) => {
                    c.accepted += 1;
                    if let Err(why) = r {
                        c.violations.push(format!("{file} case {k} ({count} bytes {edits:?}): {why}"));
                    }
                }
            }
        }
        std::fs::write(dir.join(file), &clean).unwrap();
        std::fs::write(dir.join("bundle.toml"), &manifest).unwrap();
    }
    println!(
        "flip fuzz {test}: {} runs in {:.1} s: {} refused at open ({} by the known-answer self-test), {} analyses \
         failed with an error, {} analyses accepted, {} accepted analyses violate the oracle",
        c.runs,
        t.elapsed().as_secs_f64(),
        c.open_errors,
        c.self_test_errors,
        c.analyse_errors,
        c.accepted,
        c.violations.len()
    );
    for v in &c.violations {
        println!("  VIOLATION {v}");
    }
    c
}

/// Flipped graphs with a valid checksum (TL, AD, encoder, decoder, step, step TL, step AD of the tanh fixture), with
/// the default options: each run is an error or an analysis inside bounds whose J decreased. Bounded: 15 runs per
/// graph (LATENTDA_FUZZ_SCALE multiplies them); `LATENTDA_FUZZ_ORT=1` repeats it with ONNX Runtime;
/// `LATENTDA_FUZZ_SELF_TEST=0` runs it with the self-test off, to count what the self-test adds.
#[test]
fn fuzz_flipped_graphs_error_or_sound_analysis() {
    let self_test = std::env::var("LATENTDA_FUZZ_SELF_TEST").map_or(true, |v| v != "0");
    let c = flip_fuzz("fuzz_flips", 15, &latentda::Options { self_test, ..Default::default() });
    assert_eq!(c.runs, c.open_errors + c.analyse_errors + c.accepted);
    assert!(c.self_test_errors > 0 || !self_test, "the self-test refused none of {} flipped graphs", c.runs);
    assert!(
        c.violations.is_empty(),
        "{} accepted analyses violate the oracle:\n{}",
        c.violations.len(),
        c.violations.join("\n")
    );
    if std::env::var("LATENTDA_FUZZ_ORT").is_ok_and(|v| v == "1") {
        let o = latentda::Options {
            backend: "ort".into(),
            ort_library: Some(onnxruntime_library().to_string_lossy().into_owned()),
            self_test,
            ..Default::default()
        };
        let c = flip_fuzz("fuzz_flips_ort", 15, &o);
        assert!(
            c.violations.is_empty(),
            "ort: {} accepted analyses violate the oracle:\n{}",
            c.violations.len(),
            c.violations.join("\n")
        );
    }
}

/// Corpus `flipped/`: graphs of the tanh fixture with random bytes flipped (tests/corpus/README.md) that opened and
/// analysed without the known-answer self-test: a TL that made J grow by orders of magnitude, an encoder that made
/// the analysis a silent no-op. With their checksums rewritten, each is now refused at open by the self-test, with
/// a bundle error naming the graph and the size of the difference; with `self_test = false` (the behaviour before)
/// each still opens.
#[test]
fn flipped_graphs_in_the_corpus_are_refused_by_the_self_test() {
    let mut n = 0;
    for p in corpus("flipped") {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some((graph, _)) = name.split_once(".flip") else { continue };
        let target = format!("{graph}.onnx");
        let dir = copy_fixture("tanh", &format!("corpus_flipped_{n}"));
        std::fs::copy(&p, dir.join(&target)).unwrap();
        refresh_checksum(&dir, &target);
        let off = latentda::Options { self_test: false, ..Default::default() };
        assert!(latentda::Analyser::open(&dir, off).is_ok(), "{name}: does not open even without the self-test");
        let e = latentda::Analyser::open(&dir, latentda::Options::default())
            .err()
            .unwrap_or_else(|| panic!("{name} opened"));
        assert_eq!(e.status, latentda::Status::Bundle, "{name}: {}", e.message);
        let m = &e.message;
        assert!(
            m.contains("known-answer self-test") && m.contains(&format!("graph '{graph}'")) && m.contains(&target),
            "{name}: {m}"
        );
        assert!(m.contains("relative L2 difference of") || m.contains("non-finite"), "{name}: {m}");
        n += 1;
    }
    assert!(n >= 2, "expected the flipped corpus graphs, found {n}");
}

/// The probes of the committed bundles: every graph of the fixtures (step models included) and of the reference
/// bundle is probed, and the self-test at open passes with tract; the report and `info` carry it.
#[test]
fn committed_bundles_have_probes_and_pass_the_self_test() {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/speedy-t31");
    for (dir, graphs) in [(fixture("tanh"), 7), (fixture("linear"), 7), (reference, 4)] {
        let a = latentda::Analyser::open(&dir, latentda::Options::default()).unwrap();
        let p = a.bundle.probes.as_ref().unwrap_or_else(|| panic!("{} has no probes", dir.display()));
        assert!(
            p.graphs.len() >= graphs && p.missing.is_empty(),
            "{}: {:?} {:?}",
            dir.display(),
            p.graphs.len(),
            p.missing
        );
        assert_eq!(a.self_test.status, "passed", "{}", dir.display());
        assert_eq!(a.self_test.graphs.len(), p.graphs.len());
        let (g, worst) = a.self_test.worst().unwrap();
        assert!(worst <= latentda::bundle::probe::DEFAULT_TOLERANCE, "{}: {g} {worst}", dir.display());
        println!(
            "{}: {} graphs probed in {:.3} s, largest difference {worst:.1e} ({g})",
            dir.display(),
            p.graphs.len(),
            a.self_test.seconds
        );
    }
    let (code, out, err) = cli(&["info", fixture("tanh").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("self-test   passed: 7 graphs"), "{out}");
}

/// A bundle without probes (written before they existed) still opens: the self-test reports "no probes" with a
/// warning naming the command that writes them; `latentda probes` then writes them (a NetCDF file, its [probes]
/// table and checksum), and the bundle passes. Option `self_test = false` skips the test.
#[test]
fn probes_writer_and_bundles_without_probes() {
    let dir = copy_fixture("tanh", "probes_writer");
    // Remove [probes] and its checksum, as in a bundle written before them.
    let text = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    let mut skip = false;
    let old: Vec<&str> = text
        .lines()
        .filter(|l| {
            if l.starts_with('[') {
                skip = *l == "[probes]";
            }
            !skip && !l.starts_with("\"probes.nc\"")
        })
        .collect();
    std::fs::write(dir.join("bundle.toml"), old.join("\n") + "\n").unwrap();
    std::fs::remove_file(dir.join("probes.nc")).unwrap();
    let a = latentda::Analyser::open(&dir, latentda::Options::default()).unwrap();
    assert_eq!(a.self_test.status, "no probes");
    assert!(a.self_test.warnings[0].contains("latentda probes"), "{:?}", a.self_test.warnings);
    let (code, out, _) = cli(&["info", dir.to_str().unwrap()]);
    assert!(code == 0 && out.contains("self-test   WARNING") && out.contains("has no probes"), "{out}");
    let off = latentda::Analyser::open(&dir, latentda::Options { self_test: false, ..Default::default() }).unwrap();
    assert_eq!(off.self_test.status, "off");
    // Write them.
    let (code, out, err) = cli(&["probes", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("self-test   passed: 7 graphs"), "{out}");
    let b = latentda::bundle::Bundle::open(&dir).unwrap();
    let p = b.probes.as_ref().unwrap();
    assert_eq!(p.tolerance, latentda::bundle::probe::DEFAULT_TOLERANCE);
    assert_eq!(
        p.graphs.iter().map(|g| g.graph.as_str()).collect::<Vec<_>>(),
        ["encoder", "decoder", "decoder_tl", "decoder_ad", "step", "step_tl", "step_ad"]
    );
    // The same probes as the committed ones (the inputs are seeded; on another CPU tract's kernels may round the
    // last bits differently, so within 1e-5), and writing twice on one machine changes nothing.
    let committed = latentda::bundle::Bundle::open(fixture("tanh")).unwrap().probes.unwrap();
    for (g, c) in p.graphs.iter().zip(&committed.graphs) {
        assert_eq!(g.graph, c.graph);
        for ((n, v), (m, w)) in
            g.inputs.iter().chain(std::iter::once(&g.output)).zip(c.inputs.iter().chain(std::iter::once(&c.output)))
        {
            assert_eq!(n, m);
            let d = latentda::bundle::probe::rel_diff(v, w);
            assert!(d <= 1e-5, "{} {n}: {d:e} from the committed probes", g.graph);
        }
    }
    let manifest = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    let (code, _, err) = cli(&["probes", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("bundle.toml")).unwrap(),
        manifest,
        "a second write changed the manifest"
    );
    // A probes file whose expected output was altered (checksum rewritten) fails the self-test, naming the graph.
    let probes = dir.join("probes.nc");
    let n = b.layout.state_len();
    let (mut dims, mut vars) = (vec![("state".to_string(), n), ("latent".to_string(), b.latent_size())], vec![]);
    dims.dedup();
    for g in &p.graphs {
        for (t, v) in g.inputs.iter().chain(std::iter::once(&g.output)) {
            let mut v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            if g.graph == "decoder_ad" && t == &g.output.0 {
                v[3] += 1e-2 * v.iter().map(|x| x * x).sum::<f64>().sqrt();
            }
            let dim = if v.len() == n { "state" } else { "latent" };
            vars.push(NcVar { kind: NcKind::F32, ..NcVar::f64(&format!("{}_{t}", g.graph), &[dim], v) });
        }
    }
    write_nc(&probes, true, &dims, &vars).unwrap();
    refresh_checksum(&dir, "probes.nc");
    let e = latentda::Analyser::open(&dir, latentda::Options::default()).unwrap_err();
    assert!(e.message.contains("graph 'decoder_ad'") && e.message.contains("1.000e-2"), "{}", e.message);
    // Probes written before the [forecast] table (no step-model variables): the bundle opens, the three step graphs
    // are listed as untested.
    let ae_only: Vec<NcVar> = vars.iter().filter(|v| !v.name.starts_with("step")).cloned().collect();
    let mut ae_only = ae_only;
    let ad = ae_only.iter_mut().find(|v| v.name == "decoder_ad_dz").unwrap();
    ad.data = Some(p.graphs[3].output.1.iter().map(|&x| x as f64).collect());
    write_nc(&probes, true, &dims, &ae_only).unwrap();
    refresh_checksum(&dir, "probes.nc");
    let a = latentda::Analyser::open(&dir, latentda::Options::default()).unwrap();
    assert_eq!(a.self_test.status, "passed");
    assert_eq!(a.self_test.graphs.len(), 4);
    assert_eq!(a.bundle.probes.as_ref().unwrap().missing, ["step", "step_tl", "step_ad"]);
    assert!(
        a.self_test.warnings.len() == 3 && a.self_test.warnings[0].contains("graph 'step' has no probe"),
        "{:?}",
        a.self_test.warnings
    );
    assert!(a.self_test.summary().contains("WARNING"), "{}", a.self_test.summary());
    // Probes of another length (written for another manifest) are named as such, after the graphs' own checks.
    let v = vars.iter_mut().find(|v| v.name == "decoder_x").unwrap();
    v.dims = vec!["latent".into()];
    v.data = Some(vec![0.5; b.latent_size()]);
    write_nc(&probes, true, &dims, &vars).unwrap();
    refresh_checksum(&dir, "probes.nc");
    let e = latentda::Analyser::open(&dir, latentda::Options::default()).unwrap_err();
    assert!(e.message.contains("'decoder_x' has 32 values") && e.message.contains("another manifest"), "{}", e.message);
}

/// Absurd statistics (issue 25, item 5): each is a bundle error at open that names the file, the channel (or
/// index) and the value; a normalisation with mean 1e308 and std 5e-324 used to pass.
#[test]
fn absurd_statistics_are_refused_naming_the_channel() {
    let dir = copy_fixture("tanh", "absurd_statistics");
    let b = latentda::bundle::Bundle::open(&dir).unwrap();
    let (mean, std) = (b.mean.clone(), b.std.clone());
    let norm = |m: &[f64], s: &[f64]| {
        write_nc(
            &dir.join("normalisation.nc"),
            true,
            &[("channel".to_string(), m.len())],
            &[NcVar::f64("mean", &["channel"], m.to_vec()), NcVar::f64("std", &["channel"], s.to_vec())],
        )
        .unwrap();
        refresh_checksum(&dir, "normalisation.nc");
    };
    let expect = |what: &str, needles: &[&str]| {
        let e = latentda::Analyser::open(&dir, latentda::Options::default())
            .err()
            .unwrap_or_else(|| panic!("{what}: opened"));
        assert_eq!(e.status, latentda::Status::Bundle, "{what}: {}", e.message);
        for n in needles {
            assert!(e.message.contains(n), "{what}: '{n}' not in: {}", e.message);
        }
    };
    // Channel 4 is t at level index 1 (sigma 0.5).
    let with = |c: usize, m: f64, s: f64| {
        let (mut mm, mut ss) = (mean.clone(), std.clone());
        mm[c] = m;
        ss[c] = s;
        (mm, ss)
    };
    for (what, c, m, s, needles) in [
        ("mean 1e308, std 5e-324", 4, 1e308, 5e-324, vec!["normalisation.nc", "channel 4 (t@1)", "1e308", "float32"]),
        ("mean 1e308, std 1", 4, 1e308, 1.0, vec!["channel 4 (t@1)", "mean 1e308", "float32 range"]),
        ("std 5e-324", 0, 6.0, 5e-324, vec!["channel 0 (u@0)", "std 5e-324", "normal float32"]),
        ("std 1e39", 6, 1e5, 1e39, vec!["channel 6 (ps)", "std 1e39"]),
        ("std below 1e-6 |mean|", 6, 1e5, 0.05, vec!["channel 6 (ps)", "std 5e-2", "below 1e-6 times |mean|"]),
        ("std 0", 3, 245.0, 0.0, vec!["channel 3 (t@0)", "std > 0"]),
        ("std negative", 3, 245.0, -1.0, vec!["channel 3 (t@0)", "std -1e0"]),
        ("mean inf", 5, f64::INFINITY, 16.0, vec!["channel 5 (t@2)", "mean inf"]),
    ] {
        let (mm, ss) = with(c, m, s);
        norm(&mm, &ss);
        expect(what, &needles);
    }
    norm(&mean, &std);
    assert!(latentda::Analyser::open(&dir, latentda::Options::default()).is_ok(), "restored statistics must open");
    // Latent variances: zero, negative, NaN, subnormal, beyond float32.
    let lv = b.latent_variance.clone();
    for (what, v, needle) in [
        ("0", 0.0, "variance[7] = 0e0"),
        ("-1", -1.0, "variance[7] = -1e0"),
        ("NaN", f64::NAN, "variance[7] = NaN"),
        ("1e-310", 1e-310, "variance[7] = 1e-310"),
        ("1e39", 1e39, "variance[7] = 1e39"),
    ] {
        let mut l = lv.clone();
        l[7] = v;
        write_nc(
            &dir.join("latent_variance.nc"),
            true,
            &[("latent".to_string(), l.len())],
            &[NcVar::f64("variance", &["latent"], l)],
        )
        .unwrap();
        refresh_checksum(&dir, "latent_variance.nc");
        expect(&format!("latent variance {what}"), &["latent_variance.nc", needle]);
    }
}
