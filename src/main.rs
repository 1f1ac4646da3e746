//! The `latentda` command-line tool: `info`, `check`, `analyse`, `demo`, `tune`. A thin layer over the library: parse arguments,
//! validate them into ready objects, run, and report any error once, with its cause, at the top.

use std::path::PathBuf;
use std::process::ExitCode;

use latentda::bundle::ncio;
use latentda::diag::checks;
use latentda::obs;
use latentda::outfile;
use latentda::var::fourd::FourD;
use latentda::var::withheld::Withheld;
use latentda::{Analyser, Method, Options, OutputMode};

const USAGE: &str = "\
latentda - latent data assimilation runtime

USAGE:
  latentda info <bundle> [--backend tract|ort|auto]
  latentda probes <bundle> [--backend tract|ort|auto] [--ort-library PATH]
                   (writes the known-answer probes of every graph, probes.nc, and its [probes] table and
                   checksum in bundle.toml; every other file must match its checksum already)
  latentda sigma-b <bundle> --state a.nc[,b.nc,...] [--draws N] [--output FILE] [--backend tract|ort|auto]
                   (the latent B's calibrated variance for the background check: mean diag(U U^T) over the states,
                   N draws each (default 64), written to <bundle>/latent_b_variance.nc; prints the manifest lines)
  latentda check <bundle> [--state state.nc] [--backend tract|ort|auto] [--ort-library PATH]
  latentda twin <bundle> --background bg.nc --obs obs.csv [--method 3dvar|hybrid|l3dvar] [--samples N] [--seed S]
                   [options as for analyse]
                   (perfect-B twin: N draws of the background error from the method's B, observations at the
                   network of obs.csv (values unused) with its sigmas, each analysed with the same B: per variable
                   the mean analysis/background RMSE ratio and the share of draws worse than the background)
  latentda analyse --bundle B --background bg.nc --obs obs.csv --output an.nc
                   [--method l3dvar|3dvar|hybrid|l4dvar] [--report report.json] [--truth truth.nc]
                   [--withheld withheld.csv] [--analysis-time HOURS]
                   [--output-mode analysis|increment|full_state] [--backend tract|ort|auto]
                   [--device cpu|cuda:N] [--ort-library PATH] [--threads N] [--options opts.toml]
                   [--solver gauss_newton|adam] [--max-pairs N] [--outer-loops N] [--max-inner N]
                   [--adam-steps N] [--adam-lr X] [-v]
                   [--hybrid-alpha A] [--hybrid-beta B] [--hybrid-variables q,ps]
                   [--hybrid-alpha-tropics A] [--hybrid-beta-tropics B] [--hybrid-band-lat LAT0,LAT1]
                   [--hybrid-alpha-sh A] [--hybrid-beta-sh B]
                   [--hybrid-variable-weights 'q=A,B[,A_TROPICS,B_TROPICS[,A_SH,B_SH]];wind=...']
                   [--baseline-variance-factor F] [--baseline-length-scale-factor F] [--latent-variance-factor F]
                   [--bg-check-samples N]
                   [--bg-check-sigma-b calibrated|flow] [--latent-increment nonlinear|linear]
                   [--ensemble 'dir/member_*.nc' | m1.nc,m2.nc,...] [--ensemble-gamma G]
                   [--ensemble-localisation-km L] [--ensemble-localisation-model-km L] [--ensemble-space latent|model]
                   [--adaptive-state FILE] [--adaptive-window N] [--adaptive-bounds LO,HI]
                   [--adaptive-rule innovation|desroziers] [--adaptive-per-variable]
                   [--mix-candidates L1,L2,... --mix-state FILE --mix-score persistence] [--mix-window N] [--mix-every N]
                   [--mix-hemispheres]
                   [--window-hours H] [--slot-hours H] [--error-growth-per-hour G] [--background-at HOURS=bg.nc ...]
  latentda demo <bundle> [--case CASE] [--obs obs.csv] [--obs4d obs4d.csv] [--output OUTDIR] [options as for analyse but --output-mode]
                   (3D-Var, L3DVar and hybrid on CASE/background.nc, scored against CASE/truth.nc, and L4DVar
                   with CASE/obs4d.csv when the bundle has a step model; CASE defaults to <bundle>/sample,
                   OUTDIR to ./latentda-demo; prints one table, writes figures)

  latentda tune REPORT.json... [--output opts.toml] [--method M] [--group all] [--band global] [--hybrid-split]
                   [--per-variable] [--rule desroziers|innovation]
                   (Desroziers: accumulates the reports' innovation statistics, prints E[da db] / R and
                   E[(Hxa-Hxb) db] / HBH^T per variable group and latitude band, writes the B size they suggest;
                   --hybrid-split: hybrid alpha and beta fitted separately instead of scaled together;
                   --per-variable: hybrid weights per variable and band (extratropics, tropics) as well;
                   --rule innovation: H B H^T estimated as E[db^2] - R, as the online sizing's default rule)

--ensemble: K >= 2 member states valid at the analysis time (NetCDF files read like --background; a glob in the
file name, or a comma-separated list): method hybrid gets a third, latent ensemble part (gamma, localised on the
latent grid), method 3dvar becomes hybrid 3DEnVar (static + gamma x the model-space ensemble B).

l4dvar: observation times from the CSV's optional 'time' column (hours from the analysis time of --background);
--background-at gives the background at a later slot time (repeatable), else the step model makes it.

Exit status: 0 success, 1 error, 2 usage error, 3 success but some input rows were malformed (see report).
";

/// Why the command failed: a usage error (exit status 2) or a failure while running (exit status 1).
enum CliError {
    Usage(String),
    Failed(String),
}

impl From<String> for CliError {
    fn from(m: String) -> Self {
        CliError::Failed(m)
    }
}

fn usage(m: impl Into<String>) -> CliError {
    CliError::Usage(m.into())
}

/// Options from the command line: an options file (applied first, wherever it appears) and the flags that
/// override it (applied in the order given), so a flag always wins over the file.
struct Common {
    options: Options,
    options_file: Option<String>,
    flags: Vec<(&'static str, String)>,
}

impl Common {
    /// The options in force: defaults, then the options file, then the flags.
    fn resolve(&mut self) -> Result<(), CliError> {
        let mut o = match &self.options_file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read options file '{p}': {e}"))?;
                Options::from_toml(&text).map_err(|e| format!("options file '{p}': {e}"))?
            }
            None => Options::default(),
        };
        for (flag, v) in &self.flags {
            let int = |v: &str| {
                v.parse::<usize>().map_err(|_| usage(format!("--{flag} needs a non-negative integer, got '{v}'")))
            };
            let num = |v: &str| v.parse::<f64>().map_err(|_| usage(format!("--{flag} needs a number, got '{v}'")));
            // option enums parse with their own message, as TOML and the C ABI do
            let bad = |e: latentda::Error| usage(e.to_string());
            match *flag {
                "backend" => o.backend = v.clone(),
                "device" => o.device = v.clone(),
                "ort-library" => o.ort_library = Some(v.clone()),
                "threads" => o.threads = int(v)?,
                "solver" => o.solver = latentda::var::solver::SolverKind::parse(v).map_err(bad)?,
                "max-pairs" => o.max_pairs = Some(int(v)?),
                "max-inner" => o.max_inner = int(v)?,
                "outer-loops" => o.outer_loops = int(v)?,
                "adam-steps" => o.adam_steps = int(v)?,
                "adam-lr" => o.adam_lr = num(v)?,
                "output-mode" => o.output = OutputMode::parse(v).map_err(bad)?,
                "hybrid-alpha" => o.hybrid_alpha = Some(num(v)?),
                "hybrid-beta" => o.hybrid_beta = Some(num(v)?),
                "hybrid-variables" => o.hybrid_variables = Some(v.split(',').map(|v| v.trim().to_string()).collect()),
                "hybrid-alpha-tropics" => o.hybrid_alpha_tropics = Some(num(v)?),
                "hybrid-beta-tropics" => o.hybrid_beta_tropics = Some(num(v)?),
                "hybrid-alpha-sh" => o.hybrid_alpha_sh = Some(num(v)?),
                "hybrid-beta-sh" => o.hybrid_beta_sh = Some(num(v)?),
                "hybrid-variable-weights" => {
                    let mut table = std::collections::BTreeMap::new();
                    for entry in v.split(';').map(str::trim).filter(|e| !e.is_empty()) {
                        let Some((name, ws)) = entry.split_once('=') else {
                            return Err(usage(format!(
                                "--{flag}: entry '{entry}' is not NAME=ALPHA,BETA[,A_TR,B_TR[,A_SH,B_SH]]"
                            )));
                        };
                        let w: Vec<f64> = ws.split(',').map(|x| num(x.trim())).collect::<Result<_, _>>()?;
                        if ![2, 4, 6].contains(&w.len()) {
                            return Err(usage(format!(
                                "--{flag}: '{name}' needs 2, 4 or 6 weights (alpha,beta[,alpha_tropics,beta_tropics[,alpha_sh,beta_sh]]), got '{ws}'"
                            )));
                        }
                        // the weights not given fall back as in the options' table (VariableWeights::resolve)
                        let at = |i: usize| w.get(i).copied();
                        let w = latentda::bundle::VariableWeights {
                            alpha: at(0),
                            beta: at(1),
                            alpha_tropics: at(2),
                            beta_tropics: at(3),
                            alpha_sh: at(4),
                            beta_sh: at(5),
                        };
                        table.insert(name.trim().to_string(), w);
                    }
                    o.hybrid_variable_weights = Some(table);
                }
                "hybrid-band-lat" => {
                    let p: Vec<&str> = v.split(',').collect();
                    let [a, b] = p[..] else {
                        return Err(usage(format!("--{flag} needs two latitudes LAT0,LAT1, got '{v}'")));
                    };
                    o.hybrid_band_lat = Some([num(a.trim())?, num(b.trim())?]);
                }
                "baseline-variance-factor" => o.baseline_variance_factor = Some(num(v)?),
                "baseline-length-scale-factor" => o.baseline_length_scale_factor = Some(num(v)?),
                "latent-variance-factor" => o.latent_variance_factor = Some(num(v)?),
                "bg-check-samples" => o.bg_check_samples = int(v)?,
                "bg-check-sigma-b" => o.bg_check_sigma_b = latentda::var::options::SigmaB::parse(v).map_err(bad)?,
                "latent-increment" => {
                    o.latent_increment = Some(latentda::var::options::LatentForm::parse(v).map_err(bad)?)
                }
                "window-hours" => o.window_hours = Some(num(v)?),
                "slot-hours" => o.slot_hours = Some(num(v)?),
                "error-growth-per-hour" => o.error_growth_per_hour = Some(num(v)?),
                "ensemble-gamma" => o.ensemble_gamma = Some(num(v)?),
                "ensemble-localisation-km" => o.ensemble_localisation_km = num(v)?,
                "ensemble-localisation-model-km" => o.ensemble_localisation_model_km = Some(num(v)?),
                "ensemble-space" => o.ensemble_space = latentda::var::options::EnsembleSpace::parse(v).map_err(bad)?,
                "adaptive-state" => o.adaptive_state = Some(v.clone()),
                "adaptive-window" => o.adaptive_window = int(v)?,
                "adaptive-bounds" => {
                    let p: Vec<&str> = v.split(',').collect();
                    let [a, b] = p[..] else {
                        return Err(usage(format!("--{flag} needs two multipliers LO,HI, got '{v}'")));
                    };
                    o.adaptive_bounds = [num(a.trim())?, num(b.trim())?];
                }
                "adaptive-rule" => o.adaptive_rule = latentda::var::desroziers::Estimate::parse(v).map_err(bad)?,
                "adaptive-per-variable" => o.adaptive_per_variable = true,
                "mix-candidates" => {
                    o.mix_candidates = Some(v.split(',').map(|x| num(x.trim())).collect::<Result<Vec<f64>, _>>()?)
                }
                "mix-state" => o.mix_state = Some(v.clone()),
                "mix-window" => o.mix_window = int(v)?,
                "mix-every" => o.mix_every = int(v)?,
                "mix-hemispheres" => o.mix_hemispheres = true,
                "mix-score" => o.mix_score = latentda::var::options::MixScore::parse(v).map_err(bad)?,
                "mix-lead-hours" => o.mix_lead_hours = num(v)?,
                "verbose" => o.verbosity = 1,
                _ => unreachable!("flag --{flag} is recorded by parse_common"),
            }
        }
        let from_file = self.options_file.is_some() && self.flags.is_empty();
        o.validate().map_err(|e| if from_file { CliError::Failed(e.to_string()) } else { usage(e.to_string()) })?;
        self.options = o;
        Ok(())
    }
}

fn value(parser: &mut lexopt::Parser, name: &str) -> Result<String, CliError> {
    parser
        .value()
        .map_err(|_| usage(format!("option --{name} needs a value")))?
        .into_string()
        .map_err(|_| usage(format!("option --{name}: value is not valid UTF-8")))
}

/// An argument detached from the parser, so the parser can be borrowed again for its value.
enum Arg {
    Short(char),
    Long(String),
    Value(std::ffi::OsString),
}

impl From<lexopt::Arg<'_>> for Arg {
    fn from(a: lexopt::Arg<'_>) -> Arg {
        match a {
            lexopt::Arg::Short(c) => Arg::Short(c),
            lexopt::Arg::Long(l) => Arg::Long(l.to_string()),
            lexopt::Arg::Value(v) => Arg::Value(v),
        }
    }
}

fn parse_common(common: &mut Common, arg: &Arg, parser: &mut lexopt::Parser) -> Result<bool, CliError> {
    let name = match arg {
        Arg::Short('v') => "verbose",
        Arg::Long(l) => l.as_str(),
        _ => return Ok(false),
    };
    let flag: &'static str = match name {
        "backend" => "backend",
        "device" => "device",
        "ort-library" => "ort-library",
        "threads" => "threads",
        "solver" => "solver",
        "max-pairs" => "max-pairs",
        "max-inner" => "max-inner",
        "outer-loops" => "outer-loops",
        "adam-steps" => "adam-steps",
        "adam-lr" => "adam-lr",
        "output-mode" => "output-mode",
        "hybrid-alpha" => "hybrid-alpha",
        "hybrid-beta" => "hybrid-beta",
        "hybrid-variables" => "hybrid-variables",
        "hybrid-alpha-tropics" => "hybrid-alpha-tropics",
        "hybrid-beta-tropics" => "hybrid-beta-tropics",
        "hybrid-alpha-sh" => "hybrid-alpha-sh",
        "hybrid-beta-sh" => "hybrid-beta-sh",
        "hybrid-band-lat" => "hybrid-band-lat",
        "hybrid-variable-weights" => "hybrid-variable-weights",
        "baseline-variance-factor" => "baseline-variance-factor",
        "baseline-length-scale-factor" => "baseline-length-scale-factor",
        "latent-variance-factor" => "latent-variance-factor",
        "bg-check-samples" => "bg-check-samples",
        "bg-check-sigma-b" => "bg-check-sigma-b",
        "latent-increment" => "latent-increment",
        "window-hours" => "window-hours",
        "slot-hours" => "slot-hours",
        "error-growth-per-hour" => "error-growth-per-hour",
        "ensemble-gamma" => "ensemble-gamma",
        "ensemble-localisation-km" => "ensemble-localisation-km",
        "ensemble-localisation-model-km" => "ensemble-localisation-model-km",
        "ensemble-space" => "ensemble-space",
        "adaptive-state" => "adaptive-state",
        "adaptive-window" => "adaptive-window",
        "adaptive-bounds" => "adaptive-bounds",
        "adaptive-rule" => "adaptive-rule",
        "mix-candidates" => "mix-candidates",
        "mix-state" => "mix-state",
        "mix-window" => "mix-window",
        "mix-every" => "mix-every",
        "mix-score" => "mix-score",
        "mix-lead-hours" => "mix-lead-hours",
        "adaptive-per-variable" => {
            common.flags.push(("adaptive-per-variable", String::new()));
            return Ok(true);
        }
        "mix-hemispheres" => {
            common.flags.push(("mix-hemispheres", String::new()));
            return Ok(true);
        }
        "verbose" => {
            common.flags.push(("verbose", String::new()));
            return Ok(true);
        }
        "options" => {
            if common.options_file.is_some() {
                return Err(usage("--options given twice"));
            }
            common.options_file = Some(value(parser, "options")?);
            return Ok(true);
        }
        _ => return Ok(false),
    };
    let v = value(parser, flag)?;
    common.flags.push((flag, v));
    Ok(true)
}

fn run() -> Result<ExitCode, CliError> {
    let mut parser = lexopt::Parser::from_env();
    let sub = match parser.next().map_err(|e| usage(e.to_string()))? {
        Some(lexopt::Arg::Value(v)) => v.into_string().map_err(|_| usage("invalid command"))?,
        Some(lexopt::Arg::Short('h')) | Some(lexopt::Arg::Long("help")) | None => {
            print!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Some(lexopt::Arg::Long("version")) => {
            println!("latentda {}", env!("CARGO_PKG_VERSION"));
            return Ok(ExitCode::SUCCESS);
        }
        Some(a) => return Err(usage(format!("unexpected argument {a:?}"))),
    };
    if sub == "tune" {
        return cmd_tune(parser);
    }
    if !["info", "check", "analyse", "analyze", "demo", "probes", "sigma-b", "twin"].contains(&sub.as_str()) {
        return Err(usage(format!("unknown command '{sub}'")));
    }
    let mut common = Common { options: Options::default(), options_file: None, flags: Vec::new() };
    let mut positional: Vec<String> = Vec::new();
    let mut kv: std::collections::BTreeMap<&'static str, String> = Default::default();
    let mut backgrounds_at: Vec<(f64, String)> = Vec::new();
    while let Some(arg) = parser.next().map_err(|e| usage(e.to_string()))? {
        let arg = Arg::from(arg);
        if parse_common(&mut common, &arg, &mut parser)? {
            continue;
        }
        if matches!(&arg, Arg::Long(l) if l == "background-at") {
            if !sub.starts_with("analy") {
                return Err(usage(format!("--background-at is not an option of '{sub}'")));
            }
            let v = value(&mut parser, "background-at")?;
            let (h, f) =
                v.split_once('=').ok_or_else(|| usage(format!("--background-at needs HOURS=FILE, got '{v}'")))?;
            let h: f64 =
                h.trim().parse().map_err(|_| usage(format!("--background-at: '{h}' is not a number of hours")))?;
            backgrounds_at.push((h, f.to_string()));
            continue;
        }
        let key: &'static str = match &arg {
            Arg::Value(v) => {
                positional.push(v.clone().into_string().map_err(|_| usage("an argument is not valid UTF-8"))?);
                continue;
            }
            Arg::Short('h') => {
                print!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Arg::Long(l) => match l.as_str() {
                "bundle" => "bundle",
                "background" => "background",
                "obs" => "obs",
                "output" => "output",
                "method" => "method",
                "report" => "report",
                "truth" => "truth",
                "state" => "state",
                "case" => "case",
                "obs4d" => "obs4d",
                "ensemble" => "ensemble",
                "withheld" => "withheld",
                "analysis-time" => "analysis-time",
                "draws" => "draws",
                "samples" => "samples",
                "seed" => "seed",
                "help" => {
                    print!("{USAGE}");
                    return Ok(ExitCode::SUCCESS);
                }
                other => return Err(usage(format!("unexpected argument --{other} for '{sub}'"))),
            },
            Arg::Short(c) => return Err(usage(format!("unexpected argument -{c} for '{sub}'"))),
        };
        if kv.contains_key(key) {
            return Err(usage(format!("--{key} given twice")));
        }
        let v = value(&mut parser, key)?;
        kv.insert(key, v);
    }
    // Every argument must mean something for the command (a stray one is a usage error, not silently ignored).
    let allowed: &[&str] = match sub.as_str() {
        "info" | "probes" => &[],
        "check" => &["state"],
        "sigma-b" => &["state", "draws", "output"],
        "demo" => &["case", "obs", "obs4d", "output"],
        "twin" => &["background", "obs", "method", "samples", "seed"],
        _ => &[
            "bundle",
            "background",
            "obs",
            "output",
            "method",
            "report",
            "truth",
            "ensemble",
            "withheld",
            "analysis-time",
        ],
    };
    if let Some(k) = kv.keys().find(|k| !allowed.contains(k)) {
        return Err(usage(format!("--{k} is not an option of '{sub}'")));
    }
    // The demo runs every method and scores analyses: a method or an output mode would be silently ignored.
    if sub == "demo" && common.flags.iter().any(|(f, _)| *f == "output-mode") {
        return Err(usage("--output-mode is not an option of 'demo' (it writes and scores analyses)"));
    }
    if sub.starts_with("analy") && !positional.is_empty() {
        return Err(usage(format!("'{sub}' takes no positional arguments, got {positional:?}")));
    }
    common.resolve()?;
    // The demo runs several methods on one case: one adaptive state file cannot size them all.
    if sub == "demo" && common.options.adaptive_state.is_some() {
        return Err(usage("adaptive_state is not for 'demo' (it runs several methods): use 'analyse', once per cycle"));
    }
    if sub == "demo" && common.options.mix_state.is_some() {
        return Err(usage("mix_state is not for 'demo' (it runs several methods): use 'analyse', once per cycle"));
    }
    match sub.as_str() {
        "info" => cmd_info(&positional, &common),
        "probes" => cmd_probes(&positional, &common),
        "sigma-b" => cmd_sigma_b(&positional, &kv, &common),
        "check" => cmd_check(&positional, &kv, &common),
        "demo" => cmd_demo(&positional, &kv, &common),
        "twin" => cmd_twin(&positional, &kv, &common),
        _ => cmd_analyse(&kv, &backgrounds_at, &common),
    }
}

/// `latentda probes <bundle>`: writes the known-answer probes (latentda::model::selftest::write).
fn cmd_probes(positional: &[String], common: &Common) -> Result<ExitCode, CliError> {
    let dir = bundle_arg(positional)?;
    let exec = common.options.exec().map_err(|e| e.to_string())?;
    let w = latentda::model::selftest::write(&dir, &exec).map_err(|e| e.to_string())?;
    println!("probes      {} ({} bytes): {} ({})", w.path.display(), w.bytes, w.graphs.join(", "), w.backend);
    println!(
        "manifest    [probes] tolerance {:e}; checksum of {} updated",
        w.tolerance,
        w.path.file_name().unwrap_or_default().to_string_lossy()
    );
    println!("self-test   {}", w.self_test.summary());
    Ok(ExitCode::SUCCESS)
}

/// `latentda sigma-b <bundle> --state a.nc,b.nc,... [--draws N] [--output FILE]`: the latent B's calibrated
/// variance (`Analyser::climatological_latent_variance`), written as a state file for `[statistics]
/// latent_b_variance`.
fn cmd_sigma_b(
    positional: &[String],
    kv: &std::collections::BTreeMap<&'static str, String>,
    common: &Common,
) -> Result<ExitCode, CliError> {
    let dir = bundle_arg(positional)?;
    let mut a = Analyser::open(&dir, common.options.clone()).map_err(|e| e.to_string())?;
    let files: Vec<&str> =
        kv.get("state").ok_or_else(|| usage("sigma-b needs --state FILE[,FILE...]"))?.split(',').collect();
    let draws: usize = match kv.get("draws") {
        Some(d) => d.parse().map_err(|_| usage(format!("--draws: '{d}' is not a count")))?,
        None => 64,
    };
    let states = files
        .iter()
        .map(|f| ncio::read_state(f.as_ref(), &a.bundle.layout))
        .collect::<latentda::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    let t = std::time::Instant::now();
    let var = a.climatological_latent_variance(&states, draws).map_err(|e| e.to_string())?;
    let out = kv.get("output").map(PathBuf::from).unwrap_or_else(|| dir.join("latent_b_variance.nc"));
    let title = format!("latent B variance diag(U U^T), factor 1, mean over {} states x {draws} draws", states.len());
    let units = |v: usize| format!("({})2", a.bundle.units(v));
    ncio::write_state(&out, &a.bundle.layout, &units, &var, &title).map_err(|e| e.to_string())?;
    let lay = &a.bundle.layout;
    for (v, var_) in lay.variables.iter().enumerate() {
        let r = lay.var_range(v);
        let rms = (var[r.clone()].iter().sum::<f64>() / r.len() as f64).sqrt();
        println!("{:<4} RMS sd {rms:.4e} {}", var_.name, a.bundle.units(v));
    }
    let digest = latentda::bundle::sha256_hex(&std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display()))?);
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    println!("wrote {} ({} states x {draws} draws, {:.1} s)", out.display(), states.len(), t.elapsed().as_secs_f64());
    println!("add to bundle.toml:  [statistics] latent_b_variance = \"{name}\"   and   [checksums] \"{name}\" = \"{digest}\"");
    Ok(ExitCode::SUCCESS)
}

/// `latentda twin <bundle> --background bg.nc --obs obs.csv [--method M] [--samples N] [--seed S]`: the perfect-B
/// twin of `Analyser::perfect_b_twin` (latentda::var::twin), printed as a table.
fn cmd_twin(
    positional: &[String],
    kv: &std::collections::BTreeMap<&'static str, String>,
    common: &Common,
) -> Result<ExitCode, CliError> {
    let dir = bundle_arg(positional)?;
    let need = |k: &str| kv.get(k).cloned().ok_or_else(|| usage(format!("twin: missing --{k}")));
    let (bg, obs_path) = (need("background")?, need("obs")?);
    let method = match kv.get("method") {
        Some(m) => Method::parse(m).map_err(|e| usage(e.to_string()))?,
        None => common.options.method,
    };
    let count = |k: &str, default: u64| match kv.get(k) {
        Some(s) => s.parse::<u64>().map_err(|_| usage(format!("--{k}: '{s}' is not a count"))),
        None => Ok(default),
    };
    let (samples, seed) = (count("samples", 8)? as usize, count("seed", 1)?);
    let mut a = Analyser::open(&dir, common.options.clone()).map_err(|e| e.to_string())?;
    let layout = a.bundle.layout.clone();
    let x_b = ncio::read_state(bg.as_ref(), &layout).map_err(|e| e.to_string())?;
    let (observations, problems) = obs::read_csv(obs_path.as_ref(), &layout).map_err(|e| e.to_string())?;
    for p in &problems {
        eprintln!("latentda: warning: {obs_path}: {}", p.message);
    }
    let t = std::time::Instant::now();
    let r = a.perfect_b_twin(&x_b, &observations, method, samples, seed).map_err(|e| e.to_string())?;
    println!(
        "perfect-B twin: {} with its own B, {} draws (seeds {seed}..), {} observations of {} at their sigmas ({:.1} s)",
        method.name(),
        r.samples,
        r.observations_used,
        obs_path,
        t.elapsed().as_secs_f64()
    );
    println!("{:<5} {:>14} {:>10} {:>10} {:>8}", "var", "background", "an/bg", "sd", "worse");
    for (v, tv) in r.variables.iter().enumerate() {
        println!(
            "{:<5} {:>14.4e} {:>10.4} {:>10.4} {:>7.0}%   {}",
            tv.name,
            tv.background_rmse,
            tv.ratio_mean,
            tv.ratio_sd,
            100.0 * tv.worse_share,
            a.bundle.units(v)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn bundle_arg(positional: &[String]) -> Result<PathBuf, CliError> {
    match positional {
        [b] => Ok(PathBuf::from(b)),
        [] => Err(usage("missing <bundle> argument")),
        _ => Err(usage(format!("expected one <bundle> argument, got {positional:?}"))),
    }
}

fn cmd_info(positional: &[String], common: &Common) -> Result<ExitCode, CliError> {
    let dir = bundle_arg(positional)?;
    let a = Analyser::open(&dir, common.options.clone()).map_err(|e| e.to_string())?;
    let b = &a.bundle;
    let l = &b.layout;
    println!("bundle      {} ({})", b.name, b.dir.display());
    if !b.description.is_empty() {
        println!("description {}", b.description);
    }
    println!(
        "grid        {:?} {} x {} (lat {:.3} .. {:.3}, lon {:.3} .. {:.3}){}",
        l.grid.kind,
        l.grid.nlat(),
        l.grid.nlon(),
        l.grid.lat[0],
        l.grid.lat[l.grid.nlat() - 1],
        l.grid.lon[0],
        l.grid.lon[l.grid.nlon() - 1],
        if l.grid.periodic { ", periodic" } else { "" }
    );
    println!("vertical    {:?}, {} levels {:?}", l.vertical.kind, l.vertical.levels.len(), l.vertical.levels);
    println!("variables   {} channels", l.nchan);
    for (i, v) in l.variables.iter().enumerate() {
        println!(
            "  {:<6} {:<10} {}  {}",
            v.name,
            b.units(i),
            if v.is_surface() { "surface".to_string() } else { format!("{} levels", v.nlev) },
            b.long_name(i).unwrap_or("")
        );
    }
    println!("latent      shape {:?} = {} elements", b.latent_shape, b.latent_size());
    let lv = &b.latent_variance;
    let mean_sd = (lv.iter().sum::<f64>() / lv.len() as f64).sqrt();
    println!("latent B    diagonal, rms sd {mean_sd:.4}");
    println!("baseline B  {}", if b.baseline.is_some() { "present (3dvar and hybrid available)" } else { "absent" });
    println!(
        "hybrid      alpha {} beta {} static part on {}; baseline variance factor {}",
        b.hybrid.alpha,
        b.hybrid.beta,
        b.hybrid.variables.as_ref().map_or("all variables".to_string(), |v| v.join(", ")),
        b.baseline_variance_factor
    );
    let h = &b.hybrid;
    if h.alpha_tropics.is_some() || h.beta_tropics.is_some() || h.band_lat.is_some() {
        let band = h.band_lat.unwrap_or(latentda::var::options::DEFAULT_HYBRID_BAND_LAT);
        println!(
            "            tropics: alpha {} beta {} (ramp from |lat| {} to {} degrees)",
            h.alpha_tropics.unwrap_or(h.alpha),
            h.beta_tropics.unwrap_or(h.beta),
            band[0],
            band[1]
        );
    }
    if h.alpha_sh.is_some() || h.beta_sh.is_some() {
        println!(
            "            southern extratropics: alpha {} beta {}",
            h.alpha_sh.unwrap_or(h.alpha),
            h.beta_sh.unwrap_or(h.beta)
        );
    }
    if h.variable_weights.is_some() {
        // the resolved weights per variable (groups and fallbacks applied), as the analysis uses them
        let hs = a.hybrid_settings().map_err(|e| e.to_string())?;
        for (var, w) in b.layout.variables.iter().zip(&hs.per_variable).filter(|(_, w)| **w != hs.global()) {
            println!(
                "            {}: alpha {} beta {}, tropics alpha {} beta {}, southern alpha {} beta {}",
                var.name, w[0], w[1], w[2], w[3], w[4], w[5]
            );
        }
    }
    println!("models      encoder, decoder, decoder_tl, decoder_ad: signatures OK ({})", a.ae.info.detail);
    match &b.forecast {
        Some(f) => println!(
            "forecast    {} space, time step {} h: step, step_tl, step_ad signatures OK (method l4dvar){}",
            f.space.name(),
            f.time_step_hours,
            if f.description.is_empty() { String::new() } else { format!("; {}", f.description) }
        ),
        None => println!("forecast    none (method l4dvar needs a host step model)"),
    }
    println!("checksums   {} files verified (SHA-256)", b.checksums.len());
    println!("self-test   {}", a.self_test.summary());
    for (k, v) in &b.provenance {
        println!("provenance  {k}: {v}");
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_check(
    positional: &[String],
    kv: &std::collections::BTreeMap<&'static str, String>,
    common: &Common,
) -> Result<ExitCode, CliError> {
    let dir = bundle_arg(positional)?;
    let mut a = Analyser::open(&dir, common.options.clone()).map_err(|e| e.to_string())?;
    let state = match kv.get("state") {
        Some(p) => Some(ncio::read_state(p.as_ref(), &a.bundle.layout).map_err(|e| e.to_string())?),
        None => None,
    };
    let e = |e: latentda::Error| e.to_string();
    let mut ok = true;
    println!(
        "bundle {} ({}): {} latent, {} state values",
        a.bundle.name, a.ae.info.detail, a.ae.latent_len, a.ae.state_len
    );
    let z = checks::check_latent_point(&a.bundle, &mut a.ae, state.as_deref()).map_err(e)?;
    let where_ = if state.is_some() { "z = E(N(state))" } else { "z = E(0) (mean state)" };
    let dt = checks::decoder_dot_test(&mut a.ae, &z, 5, 1).map_err(e)?;
    let pass = dt.rel < 1e-5;
    ok &= pass;
    println!(
        "decoder TL/AD dot test at {where_}: <TL dz, u> = {:.8e}, <dz, AD u> = {:.8e}, rel diff {:.2e} (gate 1e-5) {}",
        dt.lhs,
        dt.rhs,
        dt.rel,
        if pass { "PASS" } else { "FAIL" }
    );
    // Steps from well beyond the background-error scale down to float32 round-off; the gate (central difference
    // against the TL, best over a window of steps) is the one float32 graphs can meet: see checks::TAYLOR_WINDOW_MAX.
    let eps: Vec<f64> = (-2..6).map(|k| 10f64.powi(-k)).collect();
    let rows = checks::decoder_taylor_test(&a.bundle, &mut a.ae, &z, &eps, 2).map_err(e)?;
    println!("Taylor test of the decoder TL (direction ~ latent background error):");
    ok &= print_taylor(&rows);
    let x_b = match &state {
        Some(s) => s.clone(),
        None => a.bundle.mean_state(),
    };
    let lt = checks::latent_bsqrt_dot_test(&a.bundle, &mut a.ae, &x_b, 3).map_err(e)?;
    let pass = lt.rel < 1e-5;
    ok &= pass;
    println!(
        "latent B^1/2 (U) adjoint test: rel diff {:.2e} (gate 1e-5) {}",
        lt.rel,
        if pass { "PASS" } else { "FAIL" }
    );
    // The float32 noise floor of U and U^T (no gate): how far a host minimiser can reduce its gradient
    // (docs/b-operator.md, "Float32 noise and solver tolerances"); the same numbers as lda_bsqrt_noise.
    let scale = latentda::coupling::noise::dual_scale(&a.bundle.std, a.bundle.layout.grid.npoints());
    let mut lb = latentda::bmat::latent::LatentB::at_background(&a.bundle, &mut a.ae, &x_b).map_err(e)?;
    let nf = latentda::coupling::noise::noise_floor(&mut lb, &mut a.ae, &scale, 1, 3).map_err(e)?;
    println!(
        "latent U float32 noise floor ({} trials, worst): U nonlinearity {:.2e}, U^T nonlinearity {:.2e}, adjoint mismatch \
         {:.2e}; host solvers: stop on |grad J| / |grad J0| >= {:.0e} (10x the worst), not on a change of J",
        nf.trials,
        nf.u_nonlinearity,
        nf.ut_nonlinearity,
        nf.adjoint_mismatch,
        10.0 * nf.worst()
    );
    if let Some(fc) = a.forecast_checks(&x_b, None, 3, &eps, 5).map_err(e)? {
        let pass = fc.step_dot.rel < 1e-5 && fc.chained_dot.rel < 1e-5;
        ok &= pass;
        println!(
            "{}: step TL/AD dot test rel diff {:.2e}, chained 4D TL/AD ({} slots, decoder after step model) {:.2e} (gate 1e-5) {}",
            fc.step_model,
            fc.step_dot.rel,
            fc.nslots,
            fc.chained_dot.rel,
            if pass { "PASS" } else { "FAIL" }
        );
        println!("Taylor test of the chained 4D TL (direction ~ latent background error):");
        ok &= print_taylor(&fc.taylor);
    }
    match checks::baseline_bsqrt_dot_test(&a.bundle, &mut a.ae, 4).map_err(e)? {
        Some(bt) => {
            let pass = bt.rel < 1e-10;
            ok &= pass;
            println!(
                "baseline B^1/2 adjoint test: rel diff {:.2e} (gate 1e-10, float64) {}",
                bt.rel,
                if pass { "PASS" } else { "FAIL" }
            );
        }
        None => println!("baseline B^1/2: bundle has no baseline statistics"),
    }
    if let Some(s) = &state {
        let rec = checks::reconstruction_rmse(&a.bundle, &mut a.ae, s).map_err(e)?;
        println!("reconstruction RMSE of N^-1(D(E(N(x)))) - x on the given state:");
        for (v, r) in rec {
            let i = a.bundle.layout.var_index(&v).unwrap();
            println!("  {:<6} {:>12.4e} {}", v, r, a.bundle.units(i));
        }
    }
    println!("{}", if ok { "all checks passed" } else { "SOME CHECKS FAILED" });
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Prints Taylor rows and the gate's verdict; true when it passes.
fn print_taylor(rows: &[checks::TaylorRow]) -> bool {
    println!("  {:>8} {:>12} {:>12} {:>12}", "eps", "ratio", "one-sided", "central");
    for r in rows {
        println!("  {:>8.0e} {:>12.8} {:>12.4e} {:>12.4e}", r.eps, r.ratio, r.remainder, r.central);
    }
    let v = checks::taylor_verdict(rows);
    println!(
        "  central remainder best {:.2e} at eps {:.0e}; float32 truncation + round-off V minimum {:.2e} \
         (gate: best < {:.0e}, or <= {}x the V minimum, over eps <= {}) {}",
        v.best_central,
        v.at_eps,
        v.v_minimum,
        checks::TAYLOR_TOL,
        checks::TAYLOR_FLOOR_FACTOR,
        checks::TAYLOR_WINDOW_MAX,
        if v.pass { "PASS" } else { "FAIL" }
    );
    v.pass
}

fn cmd_analyse(
    kv: &std::collections::BTreeMap<&'static str, String>,
    backgrounds_at: &[(f64, String)],
    common: &Common,
) -> Result<ExitCode, CliError> {
    let need = |k: &str| kv.get(k).cloned().ok_or_else(|| usage(format!("analyse: missing --{k}")));
    let (bundle, bg, obs_path, out) = (need("bundle")?, need("background")?, need("obs")?, need("output")?);
    let method = match kv.get("method") {
        Some(m) => Method::parse(m).map_err(|e| usage(e.to_string()))?,
        None => common.options.method,
    };
    let mode = common.options.output;
    let analysis_time = match kv.get("analysis-time") {
        Some(h) => match h.parse::<f64>() {
            Ok(x) if x.is_finite() => Some(x),
            _ => return Err(usage(format!("--analysis-time '{h}' is not a finite number of hours"))),
        },
        None => None,
    };
    // Where the results go is checked before any work: a directory, a device or a FIFO is refused.
    outfile::check_target(out.as_ref()).map_err(|e| e.to_string())?;
    if let Some(r) = kv.get("report") {
        outfile::check_target(r.as_ref()).map_err(|e| e.to_string())?;
    }
    // Validate the bundle before reading any data file.
    let mut a = Analyser::open(&bundle, common.options.clone()).map_err(|e| e.to_string())?;
    // adaptive_state: the state is written with the outputs below, not before them
    a.defer_adaptive_commit(true);
    let layout = a.bundle.layout.clone();
    let x_b = ncio::read_state(bg.as_ref(), &layout).map_err(|e| e.to_string())?;
    let truth = match kv.get("truth") {
        Some(t) => Some(ncio::read_state(t.as_ref(), &layout).map_err(|e| e.to_string())?),
        None => None,
    };
    let (observations, problems) = obs::read_csv(obs_path.as_ref(), &layout).map_err(|e| e.to_string())?;
    for p in &problems {
        eprintln!("latentda: warning: {obs_path}: {}", p.message);
    }
    // Withheld observations: read (and their file checked) before the analysis, compared after it.
    let mut withheld_problems = false;
    let withheld_obs = match kv.get("withheld") {
        Some(w) => {
            let (wo, wp) = obs::read_csv(w.as_ref(), &layout).map_err(|e| format!("--withheld: {e}"))?;
            for p in &wp {
                eprintln!("latentda: warning: {w} (withheld): {}", p.message);
            }
            withheld_problems = !wp.is_empty();
            Some(wo)
        }
        None => None,
    };
    if !backgrounds_at.is_empty() && method != Method::L4dvar {
        return Err(usage("--background-at is for method l4dvar"));
    }
    if let Some(spec) = kv.get("ensemble") {
        if !matches!(method, Method::Hybrid | Method::Var3d) {
            return Err(usage(format!("--ensemble is for methods hybrid and 3dvar, not {}", method.name())));
        }
        let files = ensemble_files(spec)?;
        let members = files
            .iter()
            .map(|f| ncio::read_state(f, &layout).map_err(|e| format!("ensemble member '{}': {e}", f.display())))
            .collect::<Result<Vec<_>, String>>()?;
        a.set_ensemble(members).map_err(|e| format!("--ensemble '{spec}' ({} files): {e}", files.len()))?;
    }
    if let Some(hours) = analysis_time {
        a.set_analysis_time(hours).map_err(|e| format!("--analysis-time: {e}"))?;
    }
    let mut result = if method == Method::L4dvar {
        let states = backgrounds_at
            .iter()
            .map(|(h, f)| ncio::read_state(f.as_ref(), &layout).map(|x| (*h, x)))
            .collect::<latentda::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        let fourd = FourD { backgrounds: states.iter().map(|(h, x)| (*h, x.as_slice())).collect(), model: None };
        a.analyse_4d(&x_b, &observations, mode, fourd)
    } else {
        a.analyse_with(&x_b, &observations, method, mode)
    }
    .map_err(|e| e.to_string())?;
    if let Some(wo) = &withheld_obs {
        result.report.withheld = Some(a.verify_withheld(wo, &x_b, &result.analysis).map_err(|e| e.to_string())?);
    }
    result.report.input_problems = problems.clone();
    let title = format!("latentda {} {} of {}", method.name(), mode.name(), bg);
    let units = |v: usize| a.bundle.units(v).to_string();
    // Both files are written completely to temporary files before either is moved into place (report first): if
    // the report cannot be written, the analysis is not written either, and no temporary file remains.
    // The adaptive_state file (if any) is rewritten after both are written and before they are moved into place: a
    // cycle whose outputs could not be written does not advance the state.
    let analysis =
        ncio::write_state_pending(out.as_ref(), &layout, &units, &result.output, &title).map_err(|e| e.to_string())?;
    let report_file = match kv.get("report") {
        Some(r) => {
            let rep = outfile::PendingFile::new(r.as_ref()).map_err(|e| format!("cannot write report: {e}"))?;
            std::fs::write(rep.path(), result.report.to_json())
                .map_err(|e| format!("cannot write report '{r}': {e}"))?;
            Some(rep)
        }
        None => None,
    };
    a.commit_adaptive_state().map_err(|e| e.to_string())?;
    if let Some(rep) = report_file {
        rep.commit().map_err(|e| format!("cannot write report: {e}"))?;
    }
    analysis.commit().map_err(|e| e.to_string())?;
    print!("{}", result.report.summary());
    if let Some(w) = &result.report.withheld {
        print!("{}", w.table());
    }
    if let Some(t) = &truth {
        let rb = layout.rms_diff_by_var(&x_b, t);
        let ra = layout.rms_diff_by_var(&result.analysis, t);
        println!("RMSE against truth:");
        println!("  {:<6} {:>12} {:>12} {:>8}", "var", "background", "analysis", "change");
        for (i, v) in layout.variables.iter().enumerate() {
            println!("  {:<6} {:>12.4e} {:>12.4e} {:>+7.1}%", v.name, rb[i], ra[i], 100.0 * (ra[i] / rb[i] - 1.0));
        }
    }
    println!("wrote {out}{}", kv.get("report").map(|r| format!(" and {r}")).unwrap_or_default());
    Ok(if problems.is_empty() && !withheld_problems { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// The member files of `--ensemble`: a comma-separated list of paths, each a file or a pattern with `*` or `?` in its
/// file name (not in its directories), expanded in sorted order. A pattern that matches nothing is an error.
fn ensemble_files(spec: &str) -> Result<Vec<PathBuf>, CliError> {
    fn matches(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some('*'), _) => matches(&p[1..], s) || (!s.is_empty() && matches(p, &s[1..])),
            (Some('?'), Some(_)) => matches(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => matches(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let mut files = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let path = PathBuf::from(item);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !name.contains(['*', '?']) {
            files.push(path);
            continue;
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if dir.to_string_lossy().contains(['*', '?']) {
            return Err(usage(format!("--ensemble '{item}': a pattern may use * and ? in the file name only")));
        }
        let pat: Vec<char> = name.chars().collect();
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| format!("--ensemble '{item}': cannot read directory '{}': {e}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.path().is_file() && matches(&pat, &e.file_name().to_string_lossy().chars().collect::<Vec<_>>())
            })
            .map(|e| dir.join(e.file_name()))
            .collect();
        if found.is_empty() {
            return Err(CliError::Failed(format!("--ensemble '{item}' matches no file")));
        }
        found.sort();
        files.append(&mut found);
    }
    if files.is_empty() {
        return Err(usage("--ensemble needs member files (a glob or a comma-separated list)"));
    }
    Ok(files)
}

fn cmd_demo(
    positional: &[String],
    kv: &std::collections::BTreeMap<&'static str, String>,
    common: &Common,
) -> Result<ExitCode, CliError> {
    let mut cfg = latentda_cli::demo::DemoConfig::new(
        bundle_arg(positional)?,
        kv.get("output").map_or("latentda-demo", |s| s.as_str()),
    );
    cfg.options = common.options.clone();
    if let Some(c) = kv.get("case") {
        cfg.case = c.into();
    }
    cfg.obs = kv.get("obs").map(Into::into);
    cfg.obs4d = kv.get("obs4d").map(Into::into);
    let demo = latentda_cli::demo::run(&cfg).map_err(|e| e.to_string())?;
    print!("{}", demo.table());
    for p in &demo.input_problems {
        eprintln!("latentda: warning: {}: {}", demo.obs_path.display(), p.message);
    }
    println!("figures: {}", demo.figures.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    println!("output folder: {}", demo.out.canonicalize().unwrap_or(demo.out.clone()).display());
    Ok(if demo.input_problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// `latentda tune REPORT.json...`: accumulates the reports' `desroziers` sections (per method), prints the ratios per
/// variable group and latitude band and the B size they suggest, and writes it as an options file (`--output`).
fn cmd_tune(mut parser: lexopt::Parser) -> Result<ExitCode, CliError> {
    use latentda::var::desroziers::{tune_with, Desroziers, Estimate};
    let (mut files, mut output, mut method, mut group, mut band) =
        (Vec::new(), None, None, "all".to_string(), "global".to_string());
    let (mut split, mut per_variable, mut rule) = (false, false, Estimate::Desroziers);
    while let Some(arg) = parser.next().map_err(|e| usage(e.to_string()))? {
        match Arg::from(arg) {
            Arg::Value(v) => files.push(v.into_string().map_err(|_| usage("an argument is not valid UTF-8"))?),
            Arg::Long(l) if l == "output" => output = Some(value(&mut parser, "output")?),
            Arg::Long(l) if l == "method" => method = Some(value(&mut parser, "method")?),
            Arg::Long(l) if l == "group" => group = value(&mut parser, "group")?,
            Arg::Long(l) if l == "band" => band = value(&mut parser, "band")?,
            Arg::Long(l) if l == "hybrid-split" => split = true,
            Arg::Long(l) if l == "per-variable" => per_variable = true,
            Arg::Long(l) if l == "rule" => {
                rule = Estimate::parse(&value(&mut parser, "rule")?).map_err(|e| usage(e.to_string()))?
            }
            Arg::Short('h') => {
                print!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Arg::Long(l) if l == "help" => {
                print!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Arg::Long(l) => return Err(usage(format!("unexpected argument --{l} for 'tune'"))),
            Arg::Short(c) => return Err(usage(format!("unexpected argument -{c} for 'tune'"))),
        }
    }
    if files.is_empty() {
        return Err(usage("tune needs at least one REPORT.json (written by `latentda analyse --report`)"));
    }
    let mut sections: Vec<Desroziers> = Vec::new();
    // Withheld-observation sections, summed per method (reports without one add nothing).
    let mut withheld: std::collections::BTreeMap<String, (usize, Withheld)> = Default::default();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("cannot read report '{f}': {e}"))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("report '{f}' is not JSON: {e}"))?;
        if let Some(w) = v.get("withheld").filter(|w| !w.is_null()) {
            let w: Withheld =
                serde_json::from_value(w.clone()).map_err(|e| format!("report '{f}': withheld section: {e}"))?;
            let m = v.get("method").and_then(|m| m.as_str()).unwrap_or("?").to_string();
            let e = withheld.entry(m).or_default();
            e.0 += 1;
            e.1.add(&w);
        }
        let d = v.get("desroziers").filter(|d| !d.is_null()).ok_or_else(|| {
            format!("report '{f}' has no desroziers section (written by a latentda older than the tune verb?)")
        })?;
        sections.push(serde_json::from_value(d.clone()).map_err(|e| format!("report '{f}': desroziers section: {e}"))?);
    }
    let mut methods: Vec<String> = sections.iter().map(|s| s.method.clone()).collect();
    methods.sort();
    methods.dedup();
    if let Some(m) = &method {
        if !methods.contains(m) {
            return Err(format!("no report of method '{m}' (the reports have {})", methods.join(", ")).into());
        }
        methods = vec![m.clone()];
    } else if output.is_some() && methods.len() > 1 {
        return Err(usage(format!(
            "the reports mix methods ({}): choose one with --method to write --output",
            methods.join(", ")
        )));
    }
    let mut written = None;
    for m in &methods {
        let of: Vec<Desroziers> = sections.iter().filter(|s| &s.method == m).cloned().collect();
        let mut t = tune_with(&of, m, &group, &band, rule).map_err(|e| e.to_string())?;
        if split && m == "hybrid" {
            t.use_split().map_err(|e| e.to_string())?;
        }
        if per_variable {
            if m != "hybrid" {
                return Err(format!(
                    "--per-variable tunes hybrid weights, and these reports are of method '{m}' (method hybrid with hybrid_alpha = 0 is a static B with per-variable weights)"
                )
                .into());
            }
            t.use_variable_weights().map_err(|e| e.to_string())?;
        }
        println!("method {m}: {} report(s); Desroziers ratios (estimate / in force; R rat = E[da db]/R, B rat = E[(Hxa-Hxb) db]/HBH^T, chi2 = E[db^2]/(R+HBH^T); ratios weighted by 1/sigma_o^2)", t.n_reports);
        print!("{}", t.table());
        if let Some((k, w)) = withheld.get(m) {
            print!("{k} of the reports compared with withheld observations; ");
            print!("{}", w.table());
        }
        print!("{}", t.options_toml());
        written = Some(t);
    }
    if let (Some(p), Some(t)) = (&output, &written) {
        if t.options.is_empty() {
            return Err(format!(
                "no B size could be derived for method {}: {} (nothing written to {p})",
                t.method,
                t.notes.join("; ")
            )
            .into());
        }
        std::fs::write(p, t.options_toml()).map_err(|e| format!("cannot write '{p}': {e}"))?;
        println!("wrote {p} (use it with --options; rerun, tune again, until the ratios are about 1)");
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(CliError::Usage(msg)) => {
            eprintln!("latentda: error: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(CliError::Failed(msg)) => {
            eprintln!("latentda: error: {msg}");
            ExitCode::from(1)
        }
    }
}
