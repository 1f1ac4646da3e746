//! NetCDF input/output through the system NetCDF C library: statistics variables and CF-style state files.

use std::path::Path;

use crate::error::{Error, Result};
use crate::bundle::grid::Layout;

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
                if get(0, &mut q.saved.0, &mut q.saved.1) >= 0 && set(0, std::ptr::null_mut(), std::ptr::null_mut()) >= 0 {
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
    netcdf::open(path).map_err(|e| Error::io(format!("cannot open NetCDF file '{}': {e}", path.display())))
}

/// Reads variable `name` of `path` as f64 and checks it has exactly `len` values.
pub fn read_var_len(path: &Path, name: &str, len: usize) -> Result<Vec<f64>> {
    let _quiet = QuietHdf5::new();
    let f = open(path).map_err(|e| Error::bundle(e.message))?;
    let v = f
        .variable(name)
        .ok_or_else(|| Error::bundle(format!("'{}' has no variable '{name}'", path.display())))?;
    let data: Vec<f64> = v
        .get_values::<f64, _>(..)
        .map_err(|e| Error::bundle(format!("'{}': cannot read '{name}': {e}", path.display())))?;
    if data.len() != len {
        return Err(Error::bundle(format!(
            "'{}': variable '{name}' has {} values, expected {len}",
            path.display(),
            data.len()
        )));
    }
    Ok(data)
}

/// Reads a CF-style state file into the channel-major state vector of `layout`.
///
/// Each bundle variable must be present with dims (lev, lat, lon) for upper-air fields or (lat, lon) for surface
/// fields (a leading time dimension of length 1 is accepted). If a `lat` coordinate exists it must match the
/// bundle grid (north to south). Values are checked for NaN/Inf, naming the variable and index.
pub fn read_state(path: &Path, layout: &Layout) -> Result<Vec<f64>> {
    let _quiet = QuietHdf5::new();
    let f = open(path)?;
    let (nlat, nlon) = (layout.grid.nlat(), layout.grid.nlon());
    let pd = path.display();
    if let Some(latv) = f.variable("lat") {
        let lat: Vec<f64> = latv.get_values::<f64, _>(..).map_err(|e| Error::io(format!("'{pd}': lat: {e}")))?;
        let reversed = lat.len() == nlat && lat.iter().rev().zip(&layout.grid.lat).all(|(a, b)| (a - b).abs() < 1e-3);
        let matches = lat.len() == nlat && lat.iter().zip(&layout.grid.lat).all(|(a, b)| (a - b).abs() < 1e-3);
        if !matches {
            let hint = if reversed { " (the file's latitudes run south to north; the bundle needs north to south)" } else { "" };
            return Err(Error::data(format!("'{pd}': coordinate 'lat' does not match the bundle grid{hint}")));
        }
    }
    if let Some(lonv) = f.variable("lon") {
        let lon: Vec<f64> = lonv.get_values::<f64, _>(..).map_err(|e| Error::io(format!("'{pd}': lon: {e}")))?;
        let matches = lon.len() == nlon && lon.iter().zip(&layout.grid.lon).all(|(a, b)| (a - b).abs() < 1e-3);
        if !matches {
            return Err(Error::data(format!("'{pd}': coordinate 'lon' does not match the bundle grid")));
        }
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
        let data: Vec<f64> = v
            .get_values::<f64, _>(..)
            .map_err(|e| Error::io(format!("'{pd}': cannot read '{}': {e}", var.name)))?;
        let off = var.first_channel * np;
        state[off..off + data.len()].copy_from_slice(&data);
    }
    if let Some(i) = state.iter().position(|v| !v.is_finite()) {
        return Err(Error::data(format!("'{pd}': non-finite value {} in {}", state[i], layout.describe_index(i))));
    }
    Ok(state)
}

/// Writes a state vector as a CF-style NetCDF file (float64), with coordinates and units.
pub fn write_state(
    path: &Path,
    layout: &Layout,
    units: &dyn Fn(usize) -> String,
    state: &[f64],
    title: &str,
) -> Result<()> {
    let _quiet = QuietHdf5::new();
    let pd = path.display();
    let err = |e: netcdf::Error| Error::io(format!("cannot write NetCDF file '{pd}': {e}"));
    // Write to a temporary name first so a failed write never leaves a half-written analysis behind.
    let tmp = path.with_extension("nc.partial");
    {
        let mut f = netcdf::create(&tmp).map_err(err)?;
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
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("cannot move '{}' to '{pd}': {e}", tmp.display())))?;
    Ok(())
}
