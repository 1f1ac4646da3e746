//! ONNX execution backends behind one small interface.
//!
//! * `tract` (default): the pure-Rust tract engine, called directly; no native library needed.
//! * `ort`: ONNX Runtime loaded at run time from a shared library (option `ort_library` or `ORT_DYLIB_PATH`),
//!   optionally with the CUDA execution provider (`device = "cuda:N"`), which must register or the open fails.
//! * `auto` ([`resolve_auto`]): ONNX Runtime when a library is found and loads (option `ort_library`,
//!   `ORT_DYLIB_PATH`, else the `onnxruntime` Python wheel in the usual Python prefixes), tract otherwise; the report's
//!   backend detail says which ran and why.
//!
//! tract is called directly rather than through `ort`'s alternative-backend API (`ort-tract`) for two reasons: a
//! model file that makes tract panic (a corrupt graph whose checksum matches) must become an error, and a panic
//! inside `ort`'s `extern "C"` API functions cannot unwind, so it aborted the host; and `ort` 2.0.0-rc.14 leaks one
//! type-info allocation per output of every run it wraps (`Value::from_session_output_ptr`). Here every tract call
//! runs under [`catch_quietly`] (`catch_unwind` without the panic text on the host's stderr), and the ONNX Runtime
//! path runs with a preallocated output (ONNX Runtime writes into it, so `ort` never wraps a fresh output value and
//! the leaking path is not taken).
//!
//! `ort` holds ONNX Runtime's API table in a process-wide slot, so one process uses one ONNX Runtime library: asking
//! for a second, different library later is an error that names both. tract has no such state and works alongside.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use ort::value::{Tensor, TensorRef};
use tract_onnx::prelude::{Framework, InferenceModelExt, TValue, TypedFact, TypedOp};
use tract_onnx::tract_core::model::IntoRunnable;
use tract_onnx::tract_core::plan::SimplePlan;

use crate::error::{Error, Result};

/// Which ONNX execution backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// Pure-Rust tract through ort's alternative-backend interface.
    Tract,
    /// ONNX Runtime loaded from a shared library at run time.
    OnnxRuntime,
}

impl BackendKind {
    /// Parses `tract` or `ort`.
    pub fn parse(s: &str) -> Result<BackendKind> {
        match s {
            "tract" => Ok(BackendKind::Tract),
            "ort" | "onnxruntime" => Ok(BackendKind::OnnxRuntime),
            _ => Err(Error::arg(format!("backend '{s}' is not known (use 'tract', 'ort' or 'auto')"))),
        }
    }
    /// Name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::OnnxRuntime => "ort",
        }
    }
}

/// Execution device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// CPU.
    Cpu,
    /// CUDA device N (ONNX Runtime backend only).
    Cuda(i32),
}

impl Device {
    /// Parses `cpu` or `cuda:N` (`cuda` means `cuda:0`).
    pub fn parse(s: &str) -> Result<Device> {
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        if s == "cuda" {
            return Ok(Device::Cuda(0));
        }
        if let Some(n) = s.strip_prefix("cuda:") {
            if let Ok(n) = n.parse::<i32>() {
                if n >= 0 {
                    return Ok(Device::Cuda(n));
                }
            }
        }
        Err(Error::arg(format!("device '{s}' is not valid (use 'cpu' or 'cuda:N')")))
    }
    /// Name used in reports.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

/// Backend selection and execution options.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Backend.
    pub backend: BackendKind,
    /// Shared library of ONNX Runtime (backend `ort`); falls back to `ORT_DYLIB_PATH`.
    pub ort_library: Option<PathBuf>,
    /// Device.
    pub device: Device,
    /// Intra-op threads (ONNX Runtime); 1 gives bit-reproducible runs on one machine (kernels, and so rounding,
    /// depend on the CPU's instruction set).
    pub threads: usize,
    /// Allow TF32 on CUDA (faster, ~5e-4 relative error; off by default so adjoint tests hold).
    pub cuda_tf32: bool,
    /// How backend `auto` chose (`None` for an explicit backend); reported with the backend.
    pub choice: Option<String>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            backend: BackendKind::Tract,
            ort_library: None,
            device: Device::Cpu,
            threads: 1,
            cuda_tf32: false,
            choice: None,
        }
    }
}

/// The `onnxruntime` Python wheel's shared library, searched in the Python prefixes a user is likely to have
/// (`VIRTUAL_ENV`, `CONDA_PREFIX`, pyenv versions, `~/.local`, `/usr/local`, `/usr`): the first
/// `lib/python3*/{site,dist}-packages/onnxruntime/capi/libonnxruntime.so.1*` in that order (names sorted within a
/// prefix, so the choice is deterministic).
pub fn find_onnxruntime_wheel() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut prefixes: Vec<PathBuf> = [env("VIRTUAL_ENV"), env("CONDA_PREFIX")].into_iter().flatten().collect();
    let home = env("HOME");
    for pyenv in [env("PYENV_ROOT"), home.as_ref().map(|h| h.join(".pyenv"))].into_iter().flatten() {
        prefixes.extend(sorted_dir(&pyenv.join("versions")));
    }
    prefixes.extend(home.map(|h| h.join(".local")));
    prefixes.extend([PathBuf::from("/usr/local"), PathBuf::from("/usr")]);
    for prefix in prefixes {
        for py in sorted_dir(&prefix.join("lib")).into_iter().filter(|p| file_name_starts(p, "python3")) {
            for packages in ["site-packages", "dist-packages"] {
                let capi = py.join(packages).join("onnxruntime").join("capi");
                if let Some(lib) = sorted_dir(&capi).into_iter().find(|p| file_name_starts(p, "libonnxruntime.so.1")) {
                    return Some(lib);
                }
            }
        }
    }
    None
}

fn sorted_dir(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

fn file_name_starts(p: &std::path::Path, prefix: &str) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix))
}

/// Backend `auto`: ONNX Runtime from the option `ort_library`, else `ORT_DYLIB_PATH`, else the Python wheel
/// ([`find_onnxruntime_wheel`]), when that library loads; otherwise tract (an error for a CUDA device, which needs
/// ONNX Runtime). Returns the concrete backend, the library and the reason, which reports show.
pub fn resolve_auto(ort_library: Option<PathBuf>, device: Device) -> Result<(BackendKind, Option<PathBuf>, String)> {
    let found = match ort_library {
        Some(p) => Some((p, "option ort_library")),
        None => match std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
            Some(p) => Some((PathBuf::from(p), "ORT_DYLIB_PATH")),
            None => find_onnxruntime_wheel().map(|p| (p, "the onnxruntime Python wheel")),
        },
    };
    let tract = |why: String| -> Result<(BackendKind, Option<PathBuf>, String)> {
        if let Device::Cuda(n) = device {
            return Err(Error::backend(format!("backend 'auto' with device cuda:{n} needs ONNX Runtime: {why}")));
        }
        Ok((BackendKind::Tract, None, format!("auto: tract, {why}")))
    };
    match found {
        None => {
            tract("no ONNX Runtime library found (option ort_library, ORT_DYLIB_PATH, onnxruntime Python wheel)".into())
        }
        Some((path, source)) => {
            let probe = ExecOptions {
                backend: BackendKind::OnnxRuntime,
                ort_library: Some(path.clone()),
                ..Default::default()
            };
            match ensure_backend(&probe) {
                Ok(_) => Ok((BackendKind::OnnxRuntime, Some(path), format!("auto: ONNX Runtime from {source}"))),
                Err(e) => tract(format!("ONNX Runtime from {source} cannot be used ({})", e.message)),
            }
        }
    }
}

/// What was actually initialised (for reports).
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// Backend name.
    pub backend: String,
    /// Library path and version for ONNX Runtime, or the tract version.
    pub detail: String,
}

/// The ONNX Runtime library this process loaded (at most one: its API table is process-wide).
struct OrtActive {
    path: PathBuf,
    info: BackendInfo,
    env: ort::environment::Environment,
    /// The loaded library, kept for the life of the process: its API table stays in use.
    _lib: libloading::Library,
}

static ORT_ACTIVE: OnceLock<OrtActive> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

fn ort_err(what: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::backend(format!("{what}: {e}"))
}

/// The message of a caught panic payload.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

// ---- Quiet panics (issue 25, item 6)
//
// A panic that latentda catches (tract on a corrupt graph, a bug caught at the C or C++ boundary) is an error
// returned to the host, with the panic message in it. Rust's default panic hook would still print "thread ...
// panicked at ..." to the host's stderr first. The hook is process-wide, so it cannot be swapped per call (two
// threads in latentda at once would restore each other's hook); instead one hook is installed once, and it is
// silent only for panics raised on a thread inside a `catch_quietly` section: every other panic (the host's own,
// another library's) goes to the hook that was in place before, unchanged.

thread_local! {
    /// How many `catch_quietly` sections this thread is inside.
    static QUIET_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// Where the last panic inside a quiet section on this thread was raised ("file:line:column").
    static QUIET_LOCATION: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

static QUIET_HOOK: std::sync::Once = std::sync::Once::new();

/// Installs the delegating hook (once per process). With `LATENTDA_PANIC_TRACE=1` in the environment at that moment,
/// latentda's caught panics are printed too (by the previous hook, with a backtrace under `RUST_BACKTRACE`).
fn install_quiet_hook() {
    // set_hook panics on a panicking thread (a host calling latentda from a destructor during unwinding): the hook
    // is then installed by a later call.
    if std::thread::panicking() {
        return;
    }
    QUIET_HOOK.call_once(|| {
        let trace = std::env::var("LATENTDA_PANIC_TRACE").is_ok_and(|v| v == "1");
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let quiet = QUIET_DEPTH.try_with(|d| d.get() > 0).unwrap_or(false);
            if quiet {
                let at = info.location().map(|l| l.to_string());
                let _ = QUIET_LOCATION.try_with(|l| l.try_borrow_mut().map(|mut l| *l = at));
            }
            if !quiet || trace {
                previous(info);
            }
        }));
    });
}

/// A panic caught by [`catch_quietly`].
pub struct CaughtPanic {
    /// The panic payload, as `catch_unwind` returns it.
    pub payload: Box<dyn std::any::Any + Send>,
    /// Where the panic was raised ("file:line:column"), when the hook saw it.
    pub location: Option<String>,
}

impl CaughtPanic {
    /// The panic message followed by where it was raised: "msg (at file:line:column)".
    pub fn message(&self) -> String {
        let m = panic_message(&*self.payload);
        match &self.location {
            Some(at) => format!("{m} (at {at})"),
            None => m,
        }
    }

    /// An `Internal` error for a panic caught at a language boundary (`boundary`: "C", "C++"), with the location.
    pub fn into_error(self, boundary: &str) -> Error {
        let at = self.location;
        let mut e = Error::from_panic(self.payload, boundary);
        if let Some(at) = at {
            e.message.push_str(&format!(" (at {at})"));
        }
        e
    }
}

/// `catch_unwind` without the panic message on stderr: runs `f`, and returns its value or the caught panic (message
/// and location) for the caller to turn into an error. The tract calls here and the C ABI and C++ bridge guards go
/// through this, so every latentda call from a host runs inside such a section and the host's stderr never shows a
/// panic latentda caught (also one caught by a plain `catch_unwind` deeper down, e.g. around NetCDF reads); panics
/// outside these sections still reach the previously installed hook. `f` is treated as unwind-safe: every caller
/// discards or poisons the state a panic may have left half-updated.
pub fn catch_quietly<R>(f: impl FnOnce() -> R) -> std::result::Result<R, CaughtPanic> {
    install_quiet_hook();
    QUIET_DEPTH.with(|d| d.set(d.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET_DEPTH.with(|d| d.set(d.get() - 1));
    r.map_err(|payload| CaughtPanic { payload, location: QUIET_LOCATION.with(|l| l.borrow_mut().take()) })
}

/// The ONNX Runtime library requested by the options (option `ort_library`, else `ORT_DYLIB_PATH`).
fn ort_library_path(opts: &ExecOptions) -> Result<PathBuf> {
    match &opts.ort_library {
        Some(p) => Ok(p.clone()),
        None => match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(Error::backend(
                "backend 'ort' needs the ONNX Runtime shared library: set option ort_library or ORT_DYLIB_PATH \
                 (e.g. .../site-packages/onnxruntime/capi/libonnxruntime.so.1.xx)",
            )),
        },
    }
}

fn load_onnxruntime(path: &std::path::Path) -> Result<(BackendInfo, libloading::Library)> {
    // SAFETY: loading ONNX Runtime runs its initialisers; it is a well-behaved shared library. The caller keeps the
    // handle for the life of the process (in a static): the API table stays in use.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| Error::backend(format!("cannot load ONNX Runtime library '{}': {e}", path.display())))?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort_sys::OrtApiBase;
    // SAFETY: OrtGetApiBase has this signature in every ONNX Runtime release.
    let get_base: libloading::Symbol<GetApiBase> = unsafe { lib.get(b"OrtGetApiBase\0") }
        .map_err(|e| Error::backend(format!("'{}' is not ONNX Runtime (no OrtGetApiBase): {e}", path.display())))?;
    // SAFETY: OrtGetApiBase returns a pointer to a static table, never null for a valid library.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(Error::backend(format!("'{}': OrtGetApiBase returned NULL", path.display())));
    }
    // SAFETY: base is a valid static OrtApiBase.
    let (api, version) = unsafe {
        let b = &*base;
        let v = std::ffi::CStr::from_ptr((b.GetVersionString)()).to_string_lossy().into_owned();
        ((b.GetApi)(ort_sys::ORT_API_VERSION), v)
    };
    if api.is_null() {
        return Err(Error::backend(format!(
            "ONNX Runtime {version} at '{}' does not provide C API version {} (needs ONNX Runtime >= 1.{})",
            path.display(),
            ort_sys::ORT_API_VERSION,
            ort_sys::ORT_API_VERSION
        )));
    }
    // SAFETY: api points to a valid OrtApi table of the requested version; ort copies it.
    let installed = ort::set_api(unsafe { std::ptr::read(api) });
    if !installed {
        // Someone else in this process (the host itself, through its own copy of `ort`) set the table first:
        // latentda would silently run on that library, not the one asked for.
        return Err(Error::backend(format!(
            "cannot use ONNX Runtime at '{}': another ONNX Runtime API table is already installed in this process",
            path.display()
        )));
    }
    Ok((BackendInfo { backend: "ort".into(), detail: format!("ONNX Runtime {version} ({})", path.display()) }, lib))
}

/// Initialises the backend the options ask for (ONNX Runtime: once per process) and returns what runs.
///
/// tract needs no initialisation. ONNX Runtime is loaded by the first open that asks for it; a later open that asks
/// for a different library fails, naming both, rather than silently running on the first one.
pub fn ensure_backend(opts: &ExecOptions) -> Result<BackendInfo> {
    let mut info = match opts.backend {
        BackendKind::Tract => {
            BackendInfo { backend: "tract".into(), detail: format!("tract {TRACT_VERSION} (pure Rust)") }
        }
        BackendKind::OnnxRuntime => ort_active(opts)?.info.clone(),
    };
    if let Some(c) = &opts.choice {
        info.detail = format!("{} [{c}]", info.detail);
    }
    Ok(info)
}

/// The tract version latentda is built with (pinned in Cargo.toml).
const TRACT_VERSION: &str = "0.23.9";

fn ort_active(opts: &ExecOptions) -> Result<&'static OrtActive> {
    let path = ort_library_path(opts)?;
    let _guard = INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = ORT_ACTIVE.get() {
        let same = a.path == path || matches!((a.path.canonicalize(), path.canonicalize()), (Ok(x), Ok(y)) if x == y);
        if !same {
            return Err(Error::backend(format!(
                "ONNX Runtime library '{}' requested, but '{}' is already loaded in this process (one ONNX Runtime \
                 library per process)",
                path.display(),
                a.path.display()
            )));
        }
        return Ok(a);
    }
    let (info, lib) = load_onnxruntime(&path)?;
    let env = match ort::init().with_name("latentda").build() {
        Ok(env) => env,
        Err(e) => {
            // ort's API table points into the library now: it must never be unloaded.
            std::mem::forget(lib);
            return Err(Error::backend(format!("cannot create the ONNX environment: {e}")));
        }
    };
    let _ = ORT_ACTIVE.set(OrtActive { path, info, env, _lib: lib });
    Ok(ORT_ACTIVE.get().expect("set above"))
}

/// Expected signature of one tensor: name and dims (`None` = batch dimension, may be symbolic).
#[derive(Debug, Clone)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: &'static str,
    /// Dims; the first is the batch dimension and must be 1 or symbolic.
    pub dims: Vec<i64>,
}

impl TensorSpec {
    /// The shape of a batch-1 tensor.
    fn batch1(&self) -> Vec<i64> {
        std::iter::once(1).chain(self.dims[1..].iter().copied()).collect()
    }
    fn len1(&self) -> usize {
        self.dims[1..].iter().map(|&d| d as usize).product()
    }
}

type TractPlan = Arc<SimplePlan<TypedFact, Box<dyn TypedOp>>>;

/// The engine behind one model.
enum Engine {
    /// A tract plan with its inputs in spec order, and the index of the wanted output.
    Tract { plan: TractPlan, output: usize },
    /// An ONNX Runtime session and run options that select the wanted output into a preallocated tensor.
    Ort { session: Session, run: RunOptions<HasSelectedOutputs> },
}

/// One ONNX graph in a session, created once and reused.
pub struct OnnxModel {
    file: String,
    engine: Engine,
    inputs: Vec<TensorSpec>,
    output: TensorSpec,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel").field("file", &self.file).finish()
    }
}

/// Checks one declared tensor (element type, dims; negative dims are symbolic) against its spec.
fn check_signature(file: &str, kind: &str, spec: &TensorSpec, float32: bool, dims: &[i64], what: &str) -> Result<()> {
    if !float32 {
        return Err(Error::bundle(format!("{file}: {kind} '{}' has type {what}, expected float32", spec.name)));
    }
    let ok = dims.len() == spec.dims.len()
        && (dims[0] == 1 || dims[0] < 0)
        && dims[1..].iter().zip(&spec.dims[1..]).all(|(a, b)| a == b);
    if !ok {
        return Err(Error::bundle(format!(
            "{file}: {kind} '{}' has shape {dims:?}, but the manifest implies [1 or batch, {}]",
            spec.name,
            spec.dims[1..].iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

fn check_outlet(file: &str, kind: &str, outlet: &ort::value::Outlet, spec: &TensorSpec) -> Result<()> {
    use ort::value::{TensorElementType, ValueType};
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            let dims: Vec<i64> = shape.iter().copied().collect();
            check_signature(file, kind, spec, *ty == TensorElementType::Float32, &dims, &format!("{ty:?}"))
        }
        other => Err(Error::bundle(format!("{file}: {kind} '{}' is not a tensor ({other:?})", spec.name))),
    }
}

/// Checks that the graph's inputs are exactly the expected names.
fn check_input_names(file: &str, names: &[String], inputs: &[TensorSpec]) -> Result<()> {
    let want: Vec<&str> = inputs.iter().map(|s| s.name).collect();
    let mut a: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut b = want.clone();
    a.sort();
    b.sort();
    if a != b {
        return Err(Error::bundle(format!("{file}: inputs are {names:?}, expected {want:?}")));
    }
    Ok(())
}

/// Parses, types and plans a graph with tract. Errors and panics (a corrupt graph can make tract panic) both come
/// back as errors.
fn tract_load(file: &str, bytes: &[u8], inputs: &[TensorSpec], output: &TensorSpec) -> Result<Engine> {
    let bad = |m: String| Error::bundle(format!("{file}: cannot load ONNX graph: {m}"));
    let r = catch_quietly(|| -> Result<Engine> {
        let onnx = tract_onnx::onnx();
        let proto = onnx.proto_model_for_read(&mut &bytes[..]).map_err(|e| bad(format!("{e:#}")))?;
        let graph = proto.graph.as_ref().ok_or_else(|| bad("the model has no graph".into()))?;
        let names: Vec<String> = graph.input.iter().map(|v| v.name.clone()).collect();
        let outs: Vec<String> = graph.output.iter().map(|v| v.name.clone()).collect();
        let parsed = onnx.parse(&proto, None).map_err(|e| bad(format!("{e:#}")))?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(bad(format!("unresolved inputs {:?}", parsed.unresolved_inputs)));
        }
        let typed = parsed.model.into_typed().map_err(|e| bad(format!("{e:#}")))?;
        // tract's typed graph lists inputs and outputs in the order of the ONNX graph's declarations.
        if typed.inputs.len() != names.len() || typed.outputs.len() != outs.len() {
            return Err(bad(format!(
                "{} inputs and {} outputs declared, tract sees {} and {}",
                names.len(),
                outs.len(),
                typed.inputs.len(),
                typed.outputs.len()
            )));
        }
        check_input_names(file, &names, inputs)?;
        let dims_of = |f: &TypedFact| -> Vec<i64> { f.shape.iter().map(|d| d.to_i64().unwrap_or(-1)).collect() };
        for spec in inputs {
            let i = names.iter().position(|n| n == spec.name).expect("names checked");
            let f = typed.input_fact(i).map_err(|e| bad(format!("{e:#}")))?;
            check_signature(
                file,
                "input",
                spec,
                f.datum_type == tract_onnx::prelude::DatumType::F32,
                &dims_of(f),
                &format!("{:?}", f.datum_type),
            )?;
        }
        let o = outs.iter().position(|n| n == output.name).ok_or_else(|| {
            Error::bundle(format!("{file}: outputs are {outs:?}, expected one named '{}'", output.name))
        })?;
        let f = typed.output_fact(o).map_err(|e| bad(format!("{e:#}")))?;
        check_signature(
            file,
            "output",
            output,
            f.datum_type == tract_onnx::prelude::DatumType::F32,
            &dims_of(f),
            &format!("{:?}", f.datum_type),
        )?;
        let plan = typed
            .with_input_names(inputs.iter().map(|s| s.name))
            .and_then(|g| g.into_runnable())
            .map_err(|e| bad(format!("{e:#}")))?;
        Ok(Engine::Tract { plan, output: o })
    });
    match r {
        Ok(r) => r,
        Err(p) => Err(bad(format!("tract failed on this graph (internal panic: {})", p.message()))),
    }
}

fn ort_load(
    file: &str,
    bytes: &[u8],
    opts: &ExecOptions,
    inputs: &[TensorSpec],
    output: &TensorSpec,
) -> Result<Engine> {
    let active = ort_active(opts)?;
    let mut b = Session::builder(&active.env).map_err(ort_err(file))?;
    b = b.with_intra_threads(opts.threads.max(1)).map_err(|e| Error::backend(format!("{file}: {e}")))?;
    b = b.with_deterministic_compute(true).map_err(|e| Error::backend(format!("{file}: {e}")))?;
    if let Device::Cuda(n) = opts.device {
        let ep = ort::ep::CUDA::default().with_device_id(n).with_tf32(opts.cuda_tf32).build().error_on_failure();
        b = b.with_execution_providers([ep]).map_err(|e| {
            Error::backend(format!("device cuda:{n} requested but the CUDA execution provider cannot be used: {e}"))
        })?;
    }
    let session =
        b.commit_from_memory(bytes).map_err(|e| Error::bundle(format!("{file}: cannot load ONNX graph: {e}")))?;
    let names: Vec<String> = session.inputs().iter().map(|o| o.name().to_string()).collect();
    check_input_names(file, &names, inputs)?;
    for spec in inputs {
        let o = session.inputs().iter().find(|o| o.name() == spec.name).expect("names checked");
        check_outlet(file, "input", o, spec)?;
    }
    let outs: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
    let o =
        session.outputs().iter().find(|o| o.name() == output.name).ok_or_else(|| {
            Error::bundle(format!("{file}: outputs are {outs:?}, expected one named '{}'", output.name))
        })?;
    check_outlet(file, "output", o, output)?;
    // Only the wanted output, written into a tensor allocated once here.
    let out = Tensor::<f32>::from_array((output.batch1(), vec![0f32; output.len1()])).map_err(ort_err(file))?;
    let sel = OutputSelector::no_default().with(output.name).preallocate(output.name, out);
    let run = RunOptions::new().map_err(ort_err(file))?.with_outputs(sel);
    Ok(Engine::Ort { session, run })
}

impl OnnxModel {
    /// Creates a session from verified bytes and checks input/output names, types and shapes; then runs the graph
    /// once on zeros, so a graph that cannot run fails at open rather than in the first analysis.
    pub fn new(
        file: &str,
        bytes: &[u8],
        opts: &ExecOptions,
        inputs: Vec<TensorSpec>,
        output: TensorSpec,
    ) -> Result<Self> {
        if let Device::Cuda(n) = opts.device {
            if opts.backend != BackendKind::OnnxRuntime {
                return Err(Error::backend(format!(
                    "device cuda:{n} needs backend 'ort' (ONNX Runtime with the CUDA provider); backend '{}' is CPU only",
                    opts.backend.name()
                )));
            }
        }
        let engine = match opts.backend {
            BackendKind::Tract => tract_load(file, bytes, &inputs, &output)?,
            BackendKind::OnnxRuntime => ort_load(file, bytes, opts, &inputs, &output)?,
        };
        let mut m = OnnxModel { file: file.to_string(), engine, inputs, output };
        let zeros: Vec<Vec<f32>> = m.inputs.iter().map(|s| vec![0f32; s.len1()]).collect();
        let refs: Vec<&[f32]> = zeros.iter().map(Vec::as_slice).collect();
        let mut out = vec![0f32; m.output.len1()];
        m.run(&refs, &mut out)
            .map_err(|e| Error::bundle(format!("{file}: the graph does not run on zero inputs: {}", e.message)))?;
        Ok(m)
    }

    /// Runs the graph with batch 1. `inputs` are given in the order of the specs; `out` receives the output.
    pub fn run(&mut self, inputs: &[&[f32]], out: &mut [f32]) -> Result<()> {
        let file = &self.file;
        for (spec, data) in self.inputs.iter().zip(inputs) {
            if data.len() != spec.len1() {
                return Err(Error::arg(format!(
                    "{file}: input '{}' needs {} values, got {}",
                    spec.name,
                    spec.len1(),
                    data.len()
                )));
            }
        }
        let want = out.len();
        let check_len = |n: usize| -> Result<()> {
            if n != want {
                return Err(Error::backend(format!(
                    "{file}: output '{}' has {n} values, expected {want}",
                    self.output.name
                )));
            }
            Ok(())
        };
        match &mut self.engine {
            Engine::Tract { plan, output } => {
                let r = catch_quietly(|| -> std::result::Result<(), String> {
                    let mut values = tract_onnx::prelude::TVec::new();
                    for (spec, data) in self.inputs.iter().zip(inputs) {
                        let shape: Vec<usize> = spec.batch1().iter().map(|&d| d as usize).collect();
                        let t = tract_onnx::prelude::Tensor::from_shape(&shape, data)
                            .map_err(|e| format!("input '{}': {e:#}", spec.name))?;
                        values.push(TValue::from(t));
                    }
                    let outs = plan.run(values).map_err(|e| format!("run failed: {e:#}"))?;
                    let o = outs.get(*output).ok_or("the run returned too few outputs")?;
                    let view = o.try_as_plain_ram().map_err(|e| format!("output '{}': {e:#}", self.output.name))?;
                    let data = view.as_slice::<f32>().map_err(|e| format!("output '{}': {e:#}", self.output.name))?;
                    check_len(data.len()).map_err(|e| e.message)?;
                    out.copy_from_slice(data);
                    Ok(())
                });
                match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(m)) => Err(Error::backend(format!("{file}: {m}"))),
                    Err(p) => Err(Error::backend(format!("{file}: tract failed (internal panic: {})", p.message()))),
                }
            }
            Engine::Ort { session, run } => {
                let mut values = Vec::with_capacity(inputs.len());
                for (spec, data) in self.inputs.iter().zip(inputs) {
                    let t = TensorRef::from_array_view((spec.batch1(), *data)).map_err(ort_err(file))?;
                    values.push((std::borrow::Cow::Borrowed(spec.name), ort::session::SessionInputValue::from(t)));
                }
                let outputs = session
                    .run_with_options(values, run)
                    .map_err(|e| Error::backend(format!("{file}: run failed: {e}")))?;
                let v = outputs
                    .get(self.output.name)
                    .ok_or_else(|| Error::backend(format!("{file}: output '{}' missing", self.output.name)))?;
                let (_, data) = v
                    .try_extract_tensor::<f32>()
                    .map_err(|e| Error::backend(format!("{file}: output '{}': {e}", self.output.name)))?;
                check_len(data.len())?;
                out.copy_from_slice(data);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 25, item 6: a caught panic comes back with its message and where it was raised, nested sections
    /// unwind their depth, and a value passes straight through.
    #[test]
    fn catch_quietly_returns_the_message_and_location() {
        let Ok(Err(p)) = catch_quietly(|| catch_quietly(|| -> u8 { panic!("boom {}", 42) })) else {
            panic!("the inner section must catch the panic")
        };
        let m = p.message();
        assert!(m.starts_with("boom 42 (at src/model/backend.rs:"), "{m}");
        assert_eq!(QUIET_DEPTH.with(|d| d.get()), 0);
        assert_eq!(catch_quietly(|| 7).ok(), Some(7));
        let e = catch_quietly(|| -> u8 { panic!("bang") }).err().unwrap().into_error("C");
        assert!(
            e.message.contains("(panic caught at the C boundary): bang (at src/model/backend.rs:"),
            "{}",
            e.message
        );
    }
}
