//! ONNX execution backends behind one small interface.
//!
//! * `tract` (default): `ort` with the pure-Rust `ort-tract` backend; no native library needed.
//! * `ort`: ONNX Runtime loaded at run time from a shared library (option `ort_library` or `ORT_DYLIB_PATH`),
//!   optionally with the CUDA execution provider (`device = "cuda:N"`), which must register or the open fails.
//!
//! `ort` holds its API table in a process-wide slot, so one process uses one backend: asking for the other one
//! later is an error that says so.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::value::TensorRef;

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
            _ => Err(Error::arg(format!("backend '{s}' is not known (use 'tract' or 'ort')"))),
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
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions { backend: BackendKind::Tract, ort_library: None, device: Device::Cpu, threads: 1, cuda_tf32: false }
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

struct Active {
    kind: BackendKind,
    info: BackendInfo,
    env: ort::environment::Environment,
}

static ACTIVE: OnceLock<Active> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

fn ort_err(what: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::backend(format!("{what}: {e}"))
}

fn load_onnxruntime(opts: &ExecOptions) -> Result<BackendInfo> {
    let path = match &opts.ort_library {
        Some(p) => p.clone(),
        None => match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                return Err(Error::backend(
                    "backend 'ort' needs the ONNX Runtime shared library: set option ort_library or ORT_DYLIB_PATH \
                     (e.g. .../site-packages/onnxruntime/capi/libonnxruntime.so.1.xx)",
                ))
            }
        },
    };
    // SAFETY: loading ONNX Runtime runs its initialisers; it is a well-behaved shared library. The handle is leaked
    // on purpose: the API table stays in use for the life of the process.
    let lib = unsafe { libloading::Library::new(&path) }
        .map_err(|e| Error::backend(format!("cannot load ONNX Runtime library '{}': {e}", path.display())))?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
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
    ort::set_api(unsafe { std::ptr::read(api) });
    Ok(BackendInfo { backend: "ort".into(), detail: format!("ONNX Runtime {version} ({})", path.display()) })
}

/// Initialises the process-wide backend (once) and returns what is active.
pub fn ensure_backend(opts: &ExecOptions) -> Result<BackendInfo> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = ACTIVE.get() {
        if a.kind != opts.backend {
            return Err(Error::backend(format!(
                "backend '{}' requested but '{}' is already active in this process (one backend per process)",
                opts.backend.name(),
                a.kind.name()
            )));
        }
        return Ok(a.info.clone());
    }
    let info = match opts.backend {
        BackendKind::Tract => {
            ort::set_api(ort_tract::api());
            BackendInfo { backend: "tract".into(), detail: "tract 0.23 via ort-tract 0.5 (pure Rust)".into() }
        }
        BackendKind::OnnxRuntime => load_onnxruntime(opts)?,
    };
    let env = ort::init().with_name("latentda").build().map_err(ort_err("cannot create the ONNX environment"))?;
    let _ = ACTIVE.set(Active { kind: opts.backend.clone(), info: info.clone(), env });
    Ok(info)
}

/// Expected signature of one tensor: name and dims (`None` = batch dimension, may be symbolic).
#[derive(Debug, Clone)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: &'static str,
    /// Dims; the first is the batch dimension and must be 1 or symbolic.
    pub dims: Vec<i64>,
}

/// One ONNX graph in a session, created once and reused.
pub struct OnnxModel {
    file: String,
    session: Session,
    inputs: Vec<TensorSpec>,
    output: TensorSpec,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel").field("file", &self.file).finish()
    }
}

fn check_outlet(file: &str, kind: &str, outlet: &ort::value::Outlet, spec: &TensorSpec) -> Result<()> {
    use ort::value::{TensorElementType, ValueType};
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            if *ty != TensorElementType::Float32 {
                return Err(Error::bundle(format!("{file}: {kind} '{}' has type {ty:?}, expected float32", spec.name)));
            }
            let dims: Vec<i64> = shape.iter().copied().collect();
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
        other => Err(Error::bundle(format!("{file}: {kind} '{}' is not a tensor ({other:?})", spec.name))),
    }
}

impl OnnxModel {
    /// Creates a session from verified bytes and checks input/output names, types and shapes.
    pub fn new(file: &str, bytes: &[u8], opts: &ExecOptions, inputs: Vec<TensorSpec>, output: TensorSpec) -> Result<Self> {
        let active = ACTIVE.get().ok_or_else(|| Error::backend("no backend initialised"))?;
        let mut b = Session::builder(&active.env).map_err(ort_err(file))?;
        if opts.backend == BackendKind::OnnxRuntime {
            b = b.with_intra_threads(opts.threads.max(1)).map_err(|e| Error::backend(format!("{file}: {e}")))?;
            b = b.with_deterministic_compute(true).map_err(|e| Error::backend(format!("{file}: {e}")))?;
        }
        match opts.device {
            Device::Cpu => {}
            Device::Cuda(n) => {
                if opts.backend != BackendKind::OnnxRuntime {
                    return Err(Error::backend(format!(
                        "device cuda:{n} needs backend 'ort' (ONNX Runtime with the CUDA provider); backend '{}' is CPU only",
                        opts.backend.name()
                    )));
                }
                let ep = ort::ep::CUDA::default().with_device_id(n).with_tf32(opts.cuda_tf32).build().error_on_failure();
                b = b.with_execution_providers([ep]).map_err(|e| {
                    Error::backend(format!("device cuda:{n} requested but the CUDA execution provider cannot be used: {e}"))
                })?;
            }
        }
        let session = b
            .commit_from_memory(bytes)
            .map_err(|e| Error::bundle(format!("{file}: cannot load ONNX graph: {e}")))?;
        let names: Vec<String> = session.inputs().iter().map(|o| o.name().to_string()).collect();
        let want: Vec<&str> = inputs.iter().map(|s| s.name).collect();
        let mut sorted_names = names.clone();
        sorted_names.sort();
        let mut sorted_want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        sorted_want.sort();
        if sorted_names != sorted_want {
            return Err(Error::bundle(format!("{file}: inputs are {names:?}, expected {want:?}")));
        }
        for spec in &inputs {
            let o = session.inputs().iter().find(|o| o.name() == spec.name).unwrap();
            check_outlet(file, "input", o, spec)?;
        }
        let outs: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
        let o = session.outputs().iter().find(|o| o.name() == output.name).ok_or_else(|| {
            Error::bundle(format!("{file}: outputs are {outs:?}, expected one named '{}'", output.name))
        })?;
        check_outlet(file, "output", o, &output)?;
        Ok(OnnxModel { file: file.to_string(), session, inputs, output })
    }

    /// Runs the graph with batch 1. `inputs` are given in the order of the specs; `out` receives the output.
    pub fn run(&mut self, inputs: &[&[f32]], out: &mut [f32]) -> Result<()> {
        let file = &self.file;
        let mut values = Vec::with_capacity(inputs.len());
        for (spec, data) in self.inputs.iter().zip(inputs) {
            let shape: Vec<i64> = std::iter::once(1).chain(spec.dims[1..].iter().copied()).collect();
            let n: i64 = shape.iter().product();
            if data.len() as i64 != n {
                return Err(Error::arg(format!("{file}: input '{}' needs {n} values, got {}", spec.name, data.len())));
            }
            let t = TensorRef::from_array_view((shape, *data)).map_err(ort_err(file))?;
            values.push((std::borrow::Cow::Borrowed(spec.name), ort::session::SessionInputValue::from(t)));
        }
        let outputs = self.session.run(values).map_err(|e| Error::backend(format!("{file}: run failed: {e}")))?;
        let (_, data) = outputs[self.output.name]
            .try_extract_tensor::<f32>()
            .map_err(|e| Error::backend(format!("{file}: output '{}': {e}", self.output.name)))?;
        if data.len() != out.len() {
            return Err(Error::backend(format!(
                "{file}: output '{}' has {} values, expected {}",
                self.output.name,
                data.len(),
                out.len()
            )));
        }
        out.copy_from_slice(data);
        Ok(())
    }
}
