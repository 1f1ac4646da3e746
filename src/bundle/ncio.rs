//! NetCDF input/output through the system NetCDF C library: statistics variables and CF-style state files.

use std::path::Path;

use crate::bundle::grid::Layout;
use crate::error::{Error, Result};

/// Silences HDF5's automatic error printing while alive, restoring the host's previous handler on drop.
///
/// NetCDF 4.9 probes optional attributes of NetCDF-4 files (e.g. `_QuantizeBitGroomNumberOfSignificantDigits`) and
/// HDF5 prints a "HDF5-DIAG" trace for each miss, which is noise, not an error. The symbols are looked up in the
/// process (libnetcdf brings libhdf5) so latentda does not link HDF5 itself; if they are absent nothing happens.
///
/// The handler is process-wide, so save, silence and restore happen under one lock held for the guard's life:
/// two threads of latentda (two contexts opening at once) cannot interleave and leave the host's handler lost.
/// A host that changes the handler itself on another thread meanwhile is not covered (HDF5 has no other hook).
struct QuietHdf5 {
    set: Option<SetAuto>,
    saved: (*mut std::ffi::c_void, *mut std::ffi::c_void),
    _lock: std::sync::MutexGuard<'static, ()>,
}

/// Serialises [`QuietHdf5`] guards.
static HDF5_HANDLER_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

type GetAuto = unsafe extern "C" fn(i64, *mut *mut std::ffi::c_void, *mut *mut std::ffi::c_void) -> i32;
type SetAuto = unsafe extern "C" fn(i64, *mut std::ffi::c_void, *mut std::ffi::c_void) -> i32;

impl QuietHdf5 {
    fn new() -> QuietHdf5 {
        let lock = HDF5_HANDLER_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut q = QuietHdf5 { set: None, saved: (std::ptr::null_mut(), std::ptr::null_mut()), _lock: lock };
        let this = libloading::os::unix::Library::this();
        // SAFETY: H5Eget_auto2/H5Eset_auto2 have these C signatures in HDF5 >= 1.8 (hid_t = int64_t since 1.10);
        // H5E_DEFAULT is 0.
        unsafe {
            let get = this.get::<GetAuto>(b"H5Eget_auto2\0");
            let set = this.get::<SetAuto>(b"H5Eset_auto2\0");
            if let (Ok(get), Ok(set)) = (get, set) {
                if get(0, &mut q.saved.0, &mut q.saved.1) >= 0
                    && set(0, std::ptr::null_mut(), std::ptr::null_mut()) >= 0
                {
                    q.set = Some(*set);
                }
            }
        }
        q
    }
}

impl Drop for QuietHdf5 {
    fn drop(&mut self) {
        if let Some(set) = self.set {
            // SAFETY: restores the handler saved in `new`.
            unsafe { set(0, self.saved.0, self.saved.1) };
        }
    }
}

fn open(path: &Path) -> Result<netcdf::File> {
    check_not_truncated(path)?;
    netcdf::open(path).map_err(|e| Error::io(format!("cannot open NetCDF file '{}': {e}", path.display())))
}

/// Refuses a classic-format file (CDF-1, CDF-2, CDF-5) shorter than its header says: the NetCDF library reads the
/// missing tail as zeros. NetCDF-4 (HDF5) files fail to open when truncated, so they need no check here.
fn check_not_truncated(path: &Path) -> Result<()> {
    let pd = path.display();
    let Ok(mut file) = std::fs::File::open(path) else { return Ok(()) }; // netcdf::open reports it
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut r = std::io::BufReader::new(&mut file);
    match classic::required_len(&mut r) {
        Ok(Some(need)) if need > len => Err(Error::io(format!(
            "'{pd}' is truncated: its header describes {need} bytes of data, the file has {len}"
        ))),
        _ => Ok(()),
    }
}

/// The classic NetCDF header, read far enough to know how long the file must be.
mod classic {
    use std::io::Read;

    struct Header<'a, R: Read> {
        r: &'a mut R,
        cdf5: bool,
    }

    impl<R: Read> Header<'_, R> {
        fn u32(&mut self) -> Option<u64> {
            let mut b = [0u8; 4];
            self.r.read_exact(&mut b).ok()?;
            Some(u32::from_be_bytes(b) as u64)
        }
        fn u64(&mut self) -> Option<u64> {
            let mut b = [0u8; 8];
            self.r.read_exact(&mut b).ok()?;
            Some(u64::from_be_bytes(b))
        }
        /// A count (4 bytes, 8 in CDF-5).
        fn count(&mut self) -> Option<u64> {
            if self.cdf5 {
                self.u64()
            } else {
                self.u32()
            }
        }
        fn skip(&mut self, n: u64) -> Option<()> {
            let n = n.checked_add(3)? & !3; // padded to 4 bytes
            let copied = std::io::copy(&mut self.r.by_ref().take(n), &mut std::io::sink()).ok()?;
            (copied == n).then_some(())
        }
        fn name(&mut self) -> Option<()> {
            let n = self.count()?;
            self.skip(n)
        }
        /// A tagged list (dimensions 0x0A, variables 0x0B, attributes 0x0C); returns its element count.
        fn list(&mut self, tag: u64) -> Option<u64> {
            let t = self.u32()?;
            let n = self.count()?;
            (t == tag || (t == 0 && n == 0)).then_some(n)
        }
        fn attributes(&mut self) -> Option<()> {
            for _ in 0..self.list(0x0C)? {
                self.name()?;
                let ty = self.u32()?;
                let n = self.count()?;
                self.skip(n.checked_mul(type_size(ty)?)?)?;
            }
            Some(())
        }
    }

    fn type_size(ty: u64) -> Option<u64> {
        match ty {
            1 | 2 | 7 => Some(1),
            3 | 8 => Some(2),
            4 | 5 | 9 => Some(4),
            6 | 10 | 11 => Some(8),
            _ => None,
        }
    }

    /// The length a classic-format file must have, from its header; `None` when it is not a classic file, the
    /// header cannot be parsed, or the record count is unknown (streaming).
    pub fn required_len<R: Read>(r: &mut R) -> std::io::Result<Option<u64>> {
        let mut magic = [0u8; 4];
        if r.read_exact(&mut magic).is_err() || &magic[..3] != b"CDF" || ![1, 2, 5].contains(&magic[3]) {
            return Ok(None);
        }
        let mut h = Header { r, cdf5: magic[3] == 5 };
        let wide_offsets = magic[3] != 1;
        Ok((|| -> Option<u64> {
            let numrecs = h.count()?;
            if numrecs == u32::MAX as u64 || numrecs == u64::MAX {
                return None;
            }
            let mut dims = Vec::new();
            for _ in 0..h.list(0x0A)? {
                h.name()?;
                dims.push(h.count()?);
            }
            h.attributes()?;
            let (mut need, mut rec_begin, mut rec_size) = (0u64, None::<u64>, 0u64);
            for _ in 0..h.list(0x0B)? {
                h.name()?;
                let nd = h.count()?;
                let mut ids = Vec::new();
                for _ in 0..nd {
                    ids.push(h.count()?);
                }
                h.attributes()?;
                let ty = h.u32()?;
                let vsize = h.count()?;
                let begin = if wide_offsets { h.u64()? } else { h.u32()? };
                let is_record = ids.first().and_then(|&d| dims.get(d as usize)) == Some(&0);
                if is_record {
                    rec_begin = Some(rec_begin.map_or(begin, |b: u64| b.min(begin)));
                    rec_size = rec_size.checked_add(vsize)?;
                } else {
                    // vsize saturates for huge variables; the product of the dims does not.
                    let mut n = type_size(ty)?;
                    for &d in &ids {
                        n = n.checked_mul(*dims.get(d as usize)?)?;
                    }
                    need = need.max(begin.checked_add(n)?);
                }
            }
            if let Some(b) = rec_begin {
                need = need.max(b.checked_add(numrecs.checked_mul(rec_size)?)?);
            }
            Some(need)
        })())
    }
}

/// What a CF variable's stored values mean: packing (`scale_factor`, `add_offset`) and which stored values are
/// missing (`_FillValue`, or the type's default fill value when the attribute is absent; `missing_value`;
/// `valid_min`, `valid_max`, `valid_range`). Missing values are compared on the stored (packed) values, as CF says.
struct CfEncoding {
    scale: f64,
    offset: f64,
    fill: Option<(f64, &'static str)>,
    missing: Vec<f64>,
    valid: (f64, f64),
}

/// A numeric attribute as f64 values (`None` if absent; an error if it is not numeric).
fn attr_f64s(v: &netcdf::Variable, name: &str, what: &dyn Fn() -> String) -> Result<Option<Vec<f64>>> {
    use netcdf::AttributeValue as A;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| v.attribute_value(name)));
    let val = match r {
        Ok(None) => return Ok(None),
        Ok(Some(Ok(x))) => x,
        Ok(Some(Err(e))) => return Err(Error::io(format!("{}: cannot read attribute '{name}': {e}", what()))),
        Err(_) => return Err(Error::io(format!("{}: cannot read attribute '{name}'", what()))),
    };
    let f: Vec<f64> = match val {
        A::Uchar(x) => vec![x as f64],
        A::Uchars(x) => x.into_iter().map(f64::from).collect(),
        A::Schar(x) => vec![x as f64],
        A::Schars(x) => x.into_iter().map(f64::from).collect(),
        A::Ushort(x) => vec![x as f64],
        A::Ushorts(x) => x.into_iter().map(f64::from).collect(),
        A::Short(x) => vec![x as f64],
        A::Shorts(x) => x.into_iter().map(f64::from).collect(),
        A::Uint(x) => vec![x as f64],
        A::Uints(x) => x.into_iter().map(f64::from).collect(),
        A::Int(x) => vec![x as f64],
        A::Ints(x) => x.into_iter().map(f64::from).collect(),
        A::Ulonglong(x) => vec![x as f64],
        A::Ulonglongs(x) => x.into_iter().map(|x| x as f64).collect(),
        A::Longlong(x) => vec![x as f64],
        A::Longlongs(x) => x.into_iter().map(|x| x as f64).collect(),
        A::Float(x) => vec![x as f64],
        A::Floats(x) => x.into_iter().map(f64::from).collect(),
        A::Double(x) => vec![x],
        A::Doubles(x) => x,
        _ => return Err(Error::io(format!("{}: attribute '{name}' is not numeric", what()))),
    };
    if f.is_empty() {
        return Err(Error::io(format!("{}: attribute '{name}' is empty", what())));
    }
    Ok(Some(f))
}

impl CfEncoding {
    fn of(v: &netcdf::Variable, what: &dyn Fn() -> String) -> Result<CfEncoding> {
        use netcdf::types::{FloatType as F, IntType as I, NcVariableType as T};
        let ty = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| v.vartype()))
            .map_err(|_| Error::data(format!("{}: unsupported variable type", what())))?;
        // The NetCDF default fill values (netcdf.h NC_FILL_*): what a variable never written reads as. Bytes have
        // no default fill check (NetCDF users guide).
        let default_fill = match ty {
            T::Float(F::F32) => Some(f32::from_bits(0x7cf0_0000) as f64), // NC_FILL_FLOAT
            T::Float(F::F64) => Some(9.969_209_968_386_869e36),
            T::Int(I::I16) => Some(-32767.0),
            T::Int(I::U16) => Some(65535.0),
            T::Int(I::I32) => Some(-2147483647.0),
            T::Int(I::U32) => Some(4294967295.0),
            T::Int(I::I64) => Some(-9223372036854775806.0),
            T::Int(I::U64) => Some(18446744073709551614.0),
            T::Int(I::I8) | T::Int(I::U8) => None,
            other => return Err(Error::data(format!("{}: type {other:?} is not numeric", what()))),
        };
        let one = |name: &str| -> Result<Option<f64>> {
            match attr_f64s(v, name, what)? {
                None => Ok(None),
                Some(x) if x.len() == 1 && x[0].is_finite() => Ok(Some(x[0])),
                Some(x) => {
                    Err(Error::data(format!("{}: attribute '{name}' = {x:?} must be one finite number", what())))
                }
            }
        };
        let fill = match attr_f64s(v, "_FillValue", what)? {
            Some(x) => Some((x[0], "_FillValue")),
            None => default_fill.map(|f| (f, "the NetCDF default fill value: never written")),
        };
        let mut valid = (f64::NEG_INFINITY, f64::INFINITY);
        if let Some(r) = attr_f64s(v, "valid_range", what)? {
            if r.len() != 2 {
                return Err(Error::data(format!("{}: valid_range must have 2 values, has {}", what(), r.len())));
            }
            valid = (r[0], r[1]);
        }
        if let Some(x) = one("valid_min")? {
            valid.0 = x;
        }
        if let Some(x) = one("valid_max")? {
            valid.1 = x;
        }
        Ok(CfEncoding {
            scale: one("scale_factor")?.unwrap_or(1.0),
            offset: one("add_offset")?.unwrap_or(0.0),
            fill,
            missing: attr_f64s(v, "missing_value", what)?.unwrap_or_default(),
            valid,
        })
    }

    /// Why stored value `x` is missing, if it is.
    fn missing_reason(&self, x: f64) -> Option<String> {
        if let Some((f, why)) = self.fill {
            if x == f || (f.is_nan() && x.is_nan()) {
                return Some(format!("{x:e} = {why}"));
            }
        }
        if self.missing.contains(&x) {
            return Some(format!("{x:e} = missing_value"));
        }
        if x < self.valid.0 || x > self.valid.1 {
            return Some(format!("{x:e} outside the valid range [{:e}, {:e}]", self.valid.0, self.valid.1));
        }
        None
    }
}

/// Reads a numeric variable with CF conventions applied: unpacked to physical values; a missing value is an error
/// naming its position (`at(i)` describes flat index `i` of the variable).
fn read_cf(v: &netcdf::Variable, what: &dyn Fn() -> String, at: &dyn Fn(usize) -> String) -> Result<Vec<f64>> {
    let enc = CfEncoding::of(v, what)?;
    let mut data: Vec<f64> =
        v.get_values::<f64, _>(..).map_err(|e| Error::io(format!("{}: cannot read: {e}", what())))?;
    for (i, x) in data.iter_mut().enumerate() {
        if let Some(why) = enc.missing_reason(*x) {
            return Err(Error::data(format!("{}: missing value ({why}) at {}", what(), at(i))));
        }
        *x = *x * enc.scale + enc.offset;
    }
    Ok(data)
}

/// Reads variable `name` of `path` as f64 (CF packing and missing values honoured) and checks it has exactly `len`
/// values.
pub fn read_var_len(path: &Path, name: &str, len: usize) -> Result<Vec<f64>> {
    let _quiet = QuietHdf5::new();
    let f = open(path).map_err(|e| Error::bundle(e.message))?;
    let v = f.variable(name).ok_or_else(|| Error::bundle(format!("'{}' has no variable '{name}'", path.display())))?;
    let what = || format!("'{}': variable '{name}'", path.display());
    let data = read_cf(&v, &what, &|i| format!("index {i}")).map_err(|e| Error::bundle(e.message))?;
    if data.len() != len {
        return Err(Error::bundle(format!(
            "'{}': variable '{name}' has {} values, expected {len}",
            path.display(),
            data.len()
        )));
    }
    Ok(data)
}

/// Reads variable `name` of `path` as f64 (CF packing and missing values honoured), whatever its length.
pub fn read_var(path: &Path, name: &str) -> Result<Vec<f64>> {
    let _quiet = QuietHdf5::new();
    let f = open(path).map_err(|e| Error::bundle(e.message))?;
    let v = f.variable(name).ok_or_else(|| Error::bundle(format!("'{}' has no variable '{name}'", path.display())))?;
    let what = || format!("'{}': variable '{name}'", path.display());
    read_cf(&v, &what, &|i| format!("index {i}")).map_err(|e| Error::bundle(e.message))
}

/// Checks a coordinate variable of the file, if present, against the bundle's values.
fn check_coordinate(
    f: &netcdf::File,
    pd: &str,
    name: &str,
    want: &[f64],
    close: &dyn Fn(f64, f64) -> bool,
    hint: &str,
) -> Result<()> {
    let Some(v) = f.variable(name) else { return Ok(()) };
    let what = || format!("'{pd}': coordinate '{name}'");
    let got = read_cf(&v, &what, &|i| format!("index {i}"))?;
    if got.len() == want.len() && got.iter().zip(want).all(|(a, b)| close(*a, *b)) {
        return Ok(());
    }
    let reversed = got.len() == want.len() && got.iter().rev().zip(want).all(|(a, b)| close(*a, *b));
    let show = |x: &[f64]| {
        let v: Vec<String> = x.iter().take(6).map(|a| format!("{a}")).collect();
        format!("[{}{}]", v.join(", "), if x.len() > 6 { ", ..." } else { "" })
    };
    let why = if reversed {
        hint.to_string()
    } else if got.len() != want.len() {
        format!(": the file has {} values, the bundle {}", got.len(), want.len())
    } else {
        format!(": the file has {}, the bundle {}", show(&got), show(want))
    };
    Err(Error::data(format!("'{pd}': coordinate '{name}' does not match the bundle{why}")))
}

/// Reads a CF-style state file into the channel-major state vector of `layout`.
///
/// Each bundle variable must be present with dims (lev, lat, lon) for upper-air fields or (lat, lon) for surface
/// fields (a leading time dimension of length 1 is accepted). Coordinates `lat`, `lon` and `lev`, where present,
/// must match the bundle (latitudes north to south, levels top to bottom). CF packing (`scale_factor`,
/// `add_offset`) is applied; a missing value (`_FillValue`, the NetCDF default fill of a variable never written,
/// `missing_value`, outside `valid_min`/`valid_max`/`valid_range`) or a NaN/Inf is an error naming the variable
/// and index. A classic-format file shorter than its header says is refused.
pub fn read_state(path: &Path, layout: &Layout) -> Result<Vec<f64>> {
    let _quiet = QuietHdf5::new();
    let f = open(path)?;
    let (nlat, nlon) = (layout.grid.nlat(), layout.grid.nlon());
    let pd = path.display().to_string();
    let deg = |a: f64, b: f64| (a - b).abs() < 1e-3;
    check_coordinate(
        &f,
        &pd,
        "lat",
        &layout.grid.lat,
        &deg,
        " (the file's latitudes run south to north; the bundle needs north to south)",
    )?;
    check_coordinate(&f, &pd, "lon", &layout.grid.lon, &deg, " (the file's longitudes are reversed)")?;
    if layout.variables.iter().any(|v| !v.is_surface()) {
        let rel = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-30);
        check_coordinate(
            &f,
            &pd,
            "lev",
            &layout.vertical.levels,
            &rel,
            " (the file's levels run bottom to top; the bundle needs top to bottom)",
        )?;
    }
    let mut state = vec![0.0; layout.state_len()];
    let np = nlat * nlon;
    for var in &layout.variables {
        let v = f
            .variable(&var.name)
            .ok_or_else(|| Error::data(format!("'{pd}' has no variable '{}' (needed by the bundle)", var.name)))?;
        let dims: Vec<(String, usize)> = v.dimensions().iter().map(|d| (d.name(), d.len())).collect();
        let mut shape: Vec<usize> = dims.iter().map(|d| d.1).collect();
        if shape.len() == if var.is_surface() { 3 } else { 4 } && shape[0] == 1 {
            shape.remove(0);
        }
        let want: Vec<usize> = if var.is_surface() { vec![nlat, nlon] } else { vec![var.nlev, nlat, nlon] };
        if shape != want {
            return Err(Error::data(format!(
                "'{pd}': variable '{}' has dims {:?}, expected {} with sizes {want:?}",
                var.name,
                dims,
                if var.is_surface() { "(lat, lon)" } else { "(lev, lat, lon)" }
            )));
        }
        let off = var.first_channel * np;
        let what = || format!("'{pd}': variable '{}'", var.name);
        let at = |i: usize| {
            let d = layout.describe_index(off + i);
            d.split_once(" at ").map_or(d.clone(), |(_, w)| w.to_string())
        };
        let data = read_cf(&v, &what, &at)?;
        state[off..off + data.len()].copy_from_slice(&data);
    }
    if let Some(i) = state.iter().position(|v| !v.is_finite()) {
        return Err(Error::data(format!("'{pd}': non-finite value {} in {}", state[i], layout.describe_index(i))));
    }
    Ok(state)
}

/// Writes a state vector as a CF-style NetCDF file (float64), with coordinates and units, whole or not at all
/// (see [`crate::outfile`]).
pub fn write_state(
    path: &Path,
    layout: &Layout,
    units: &dyn Fn(usize) -> String,
    state: &[f64],
    title: &str,
) -> Result<()> {
    write_state_pending(path, layout, units, state, title)?.commit()
}

/// [`write_state`] up to the final rename: the complete file waits in a temporary file until
/// [`crate::outfile::PendingFile::commit`] (dropping it instead removes it).
pub fn write_state_pending(
    path: &Path,
    layout: &Layout,
    units: &dyn Fn(usize) -> String,
    state: &[f64],
    title: &str,
) -> Result<crate::outfile::PendingFile> {
    let _quiet = QuietHdf5::new();
    let pd = path.display();
    let err = |e: netcdf::Error| Error::io(format!("cannot write NetCDF file '{pd}': {e}"));
    let pending = crate::outfile::PendingFile::new(path)?;
    {
        let mut f = netcdf::create(pending.path()).map_err(err)?;
        let (nlat, nlon, nlev) = (layout.grid.nlat(), layout.grid.nlon(), layout.vertical.levels.len());
        f.add_dimension("lev", nlev).map_err(err)?;
        f.add_dimension("lat", nlat).map_err(err)?;
        f.add_dimension("lon", nlon).map_err(err)?;
        f.add_attribute("Conventions", "CF-1.8").map_err(err)?;
        f.add_attribute("title", title).map_err(err)?;
        f.add_attribute("source", format!("latentda {}", env!("CARGO_PKG_VERSION"))).map_err(err)?;
        {
            let mut v = f.add_variable::<f64>("lev", &["lev"]).map_err(err)?;
            let (name, units) = match layout.vertical.kind {
                crate::bundle::grid::VerticalKind::Sigma => ("atmosphere_sigma_coordinate", "1"),
                crate::bundle::grid::VerticalKind::Pressure => ("air_pressure", "Pa"),
            };
            v.put_attribute("standard_name", name).map_err(err)?;
            v.put_attribute("units", units).map_err(err)?;
            v.put_attribute("positive", "down").map_err(err)?;
            v.put_values(&layout.vertical.levels, ..).map_err(err)?;
        }
        {
            let mut v = f.add_variable::<f64>("lat", &["lat"]).map_err(err)?;
            v.put_attribute("units", "degrees_north").map_err(err)?;
            v.put_attribute("standard_name", "latitude").map_err(err)?;
            v.put_values(&layout.grid.lat, ..).map_err(err)?;
        }
        {
            let mut v = f.add_variable::<f64>("lon", &["lon"]).map_err(err)?;
            v.put_attribute("units", "degrees_east").map_err(err)?;
            v.put_attribute("standard_name", "longitude").map_err(err)?;
            v.put_values(&layout.grid.lon, ..).map_err(err)?;
        }
        for (iv, var) in layout.variables.iter().enumerate() {
            let dims: &[&str] = if var.is_surface() { &["lat", "lon"] } else { &["lev", "lat", "lon"] };
            let mut v = f.add_variable::<f64>(&var.name, dims).map_err(err)?;
            v.put_attribute("units", units(iv)).map_err(err)?;
            v.put_values(&state[layout.var_range(iv)], ..).map_err(err)?;
        }
    }
    Ok(pending)
}

/// Names of the variables of a NetCDF file.
pub fn var_names(path: &Path) -> Result<Vec<String>> {
    let _quiet = QuietHdf5::new();
    let f = open(path).map_err(|e| Error::bundle(e.message))?;
    Ok(f.variables().map(|v| v.name()).collect())
}

/// A one-dimensional float32 variable to write with [`write_f32_vars`].
#[derive(Debug, Clone)]
pub struct F32Var {
    /// Variable name.
    pub name: String,
    /// Its dimension (declared in the `dims` argument).
    pub dim: String,
    /// Text attributes.
    pub attrs: Vec<(String, String)>,
    /// Values.
    pub data: Vec<f32>,
}

/// Writes one-dimensional float32 variables and text global attributes as a classic (64-bit offset) NetCDF file,
/// up to the final rename (see [`crate::outfile::PendingFile`]). The classic format carries no time stamps, so the
/// same content gives the same bytes.
pub fn write_f32_vars_pending(
    path: &Path,
    dims: &[(String, usize)],
    vars: &[F32Var],
    global: &[(String, String)],
) -> Result<crate::outfile::PendingFile> {
    let _quiet = QuietHdf5::new();
    let pd = path.display();
    let err = |e: netcdf::Error| Error::io(format!("cannot write NetCDF file '{pd}': {e}"));
    let pending = crate::outfile::PendingFile::new(path)?;
    {
        let mut f = netcdf::create_with(pending.path(), netcdf::Options::_64BIT_OFFSET).map_err(err)?;
        for (n, l) in dims {
            f.add_dimension(n, *l).map_err(err)?;
        }
        for (k, v) in global {
            f.add_attribute(k, v.as_str()).map_err(err)?;
        }
        for v in vars {
            let mut var = f.add_variable::<f32>(&v.name, &[v.dim.as_str()]).map_err(err)?;
            for (k, a) in &v.attrs {
                var.put_attribute(k, a.as_str()).map_err(err)?;
            }
        }
        f.enddef().map_err(err)?;
        for v in vars {
            let mut var = f.variable_mut(&v.name).expect("defined above");
            var.put_values(&v.data, ..).map_err(err)?;
        }
    }
    Ok(pending)
}
