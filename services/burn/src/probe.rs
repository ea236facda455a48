//! Is a usable CUDA driver really there? Asked of the driver itself (dlopen `libcuda.so.1`, `cuInit`,
//! `cuDeviceGetCount`) and of NVRTC, before burn's CUDA backend is touched: that backend panics in a
//! worker thread, not with an error, when the libraries are missing.

use std::sync::OnceLock;

use libloading::{Library, Symbol};

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaProbe {
    /// The driver initialised and reports devices; NVRTC (run-time kernel compilation) loads.
    Available {
        /// Devices the driver reports.
        devices: u32,
        /// Driver API version as `major.minor` (e.g. `13.0`).
        driver_version: String,
        /// The NVRTC library that loaded.
        nvrtc: String,
    },
    /// CUDA cannot be used, and why.
    Unavailable(String),
}

impl CudaProbe {
    /// Whether training may go to the GPU.
    pub fn is_available(&self) -> bool {
        matches!(self, Self::Available { .. })
    }

    /// One line for logs and model cards.
    pub fn describe(&self) -> String {
        match self {
            Self::Available {
                devices,
                driver_version,
                nvrtc,
            } => format!("CUDA driver {driver_version}, {devices} device(s), {nvrtc}"),
            Self::Unavailable(reason) => reason.clone(),
        }
    }
}

/// The driver library cudarc loads first.
const DRIVER_LIBRARY: &str = "libcuda.so.1";
/// NVRTC names cudarc tries, newest first (cubecl compiles its kernels with it at run time).
const NVRTC_LIBRARIES: [&str; 5] = [
    "libnvrtc.so",
    "libnvrtc.so.13",
    "libnvrtc.so.12",
    "libnvrtc.so.11",
    "libnvrtc.so.1",
];

/// Probes once per process and remembers the answer (the driver library stays loaded when it works,
/// as the backend will load it again anyway).
pub fn cuda() -> &'static CudaProbe {
    static PROBE: OnceLock<CudaProbe> = OnceLock::new();
    PROBE.get_or_init(|| {
        let probe = probe_uncached();
        tracing::debug!(probe = %probe.describe(), "CUDA probe");
        probe
    })
}

type CuInit = unsafe extern "C" fn(flags: u32) -> i32;
type CuDeviceGetCount = unsafe extern "C" fn(count: *mut i32) -> i32;
type CuDriverGetVersion = unsafe extern "C" fn(version: *mut i32) -> i32;

// dlopen and the driver's C entry points are foreign calls; the signatures are the CUDA driver API's
// (`CUresult` is a C enum, an `int`), and the libraries are kept loaded for the process lifetime.
#[allow(unsafe_code)]
fn probe_uncached() -> CudaProbe {
    // SAFETY: loading the NVIDIA driver runs its initialisers, which have no preconditions.
    let driver = match unsafe { Library::new(DRIVER_LIBRARY) } {
        Ok(library) => library,
        Err(error) => {
            return CudaProbe::Unavailable(format!(
                "no NVIDIA driver: {DRIVER_LIBRARY} cannot be loaded ({error})"
            ));
        }
    };
    let result = (|| -> Result<(u32, String), String> {
        // SAFETY: the symbol types match the CUDA driver API declarations.
        let (init, count, version) = unsafe {
            let init: Symbol<CuInit> = driver
                .get(b"cuInit\0")
                .map_err(|error| format!("{DRIVER_LIBRARY} has no cuInit ({error})"))?;
            let count: Symbol<CuDeviceGetCount> = driver
                .get(b"cuDeviceGetCount\0")
                .map_err(|error| format!("{DRIVER_LIBRARY} has no cuDeviceGetCount ({error})"))?;
            let version: Symbol<CuDriverGetVersion> = driver
                .get(b"cuDriverGetVersion\0")
                .map_err(|error| format!("{DRIVER_LIBRARY} has no cuDriverGetVersion ({error})"))?;
            (init, count, version)
        };
        // SAFETY: cuInit takes flags 0; the out-pointers point at live locals.
        let status = unsafe { init(0) };
        if status != 0 {
            return Err(format!(
                "the CUDA driver did not initialise (cuInit returned CUDA error {status}{})",
                if status == 100 {
                    ": no CUDA-capable device"
                } else {
                    ""
                }
            ));
        }
        let mut devices = 0i32;
        // SAFETY: as above.
        let status = unsafe { count(&mut devices) };
        if status != 0 {
            return Err(format!("cuDeviceGetCount returned CUDA error {status}"));
        }
        if devices <= 0 {
            return Err("the CUDA driver reports no device".to_owned());
        }
        let mut raw_version = 0i32;
        // SAFETY: as above.
        let status = unsafe { version(&mut raw_version) };
        let driver_version = if status == 0 {
            format!("{}.{}", raw_version / 1000, (raw_version % 1000) / 10)
        } else {
            "unknown".to_owned()
        };
        Ok((devices as u32, driver_version))
    })();
    let (devices, driver_version) = match result {
        Ok(found) => found,
        Err(reason) => return CudaProbe::Unavailable(reason),
    };
    let mut tried = Vec::new();
    for name in NVRTC_LIBRARIES {
        // SAFETY: as for the driver; NVRTC's initialisers have no preconditions.
        match unsafe { Library::new(name) } {
            Ok(library) => {
                std::mem::forget(library);
                std::mem::forget(driver);
                return CudaProbe::Available {
                    devices,
                    driver_version,
                    nvrtc: name.to_owned(),
                };
            }
            Err(error) => tried.push(format!("{name}: {error}")),
        }
    }
    CudaProbe::Unavailable(format!(
        "CUDA driver {driver_version} with {devices} device(s), but no NVRTC library for run-time \
         kernel compilation ({})",
        tried.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_name_the_reason() {
        let missing = CudaProbe::Unavailable("no NVIDIA driver".to_owned());
        assert!(!missing.is_available());
        assert_eq!(missing.describe(), "no NVIDIA driver");
        let found = CudaProbe::Available {
            devices: 1,
            driver_version: "13.0".to_owned(),
            nvrtc: "libnvrtc.so.13".to_owned(),
        };
        assert!(found.is_available());
        assert_eq!(
            found.describe(),
            "CUDA driver 13.0, 1 device(s), libnvrtc.so.13"
        );
    }

    #[test]
    fn probing_twice_gives_the_same_answer_without_panicking() {
        let first = cuda().clone();
        assert_eq!(&first, cuda());
        if let CudaProbe::Unavailable(reason) = &first {
            assert!(!reason.is_empty());
        }
    }
}
