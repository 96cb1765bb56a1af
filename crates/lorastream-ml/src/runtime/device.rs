//! Which device and how many threads tensor work uses.

use serde::Serialize;
use tch::Device;

use lorastream_base::text_enum;

text_enum! {
    /// The dtype of the frozen base weights.
    pub enum DType {
        /// bf16 on CUDA and on CPUs with native bf16 (AVX512_BF16 or AMX), f32 otherwise.
        Auto = "auto",
        F32 = "f32",
        Bf16 = "bf16",
        F16 = "f16",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {0:?} is not one of auto, cpu, cuda, cuda:N")]
    Unknown(String),
    #[error("device {spec:?} asked for, but {found}")]
    Unavailable { spec: String, found: String },
}

/// Resolves `auto | cpu | cuda | cuda:N` against what this machine has.
pub fn resolve(spec: &str) -> Result<Device, DeviceError> {
    let gpus = tch::Cuda::device_count().max(0) as usize;
    let cuda = |i: usize| {
        if i < gpus {
            Ok(Device::Cuda(i))
        } else {
            Err(DeviceError::Unavailable {
                spec: spec.to_string(),
                found: format!("{gpus} CUDA device(s) are visible"),
            })
        }
    };
    match spec {
        "auto" if gpus > 0 => Ok(Device::Cuda(0)),
        "auto" => {
            warn_if_gpu_unused();
            Ok(Device::Cpu)
        }
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(DeviceError::Unknown(other.to_string())),
        },
    }
}

/// `device = "auto"` found no CUDA device: if the host has NVIDIA device
/// nodes, say once why the GPU is not used.
fn warn_if_gpu_unused() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if let Some(node) = gpu_node(std::path::Path::new("/dev")) {
        ONCE.call_once(|| {
            tracing::warn!(
                node = %format!("/dev/{node}"),
                "device = \"auto\" runs on the CPU although this host has an NVIDIA device: \
                 libtorch sees no CUDA device (a CPU-only libtorch, a driver/CUDA mismatch, \
                 or the unit's DeviceAllow rules)"
            )
        });
    }
}

/// The first NVIDIA GPU node (`nvidia0`, `nvidia1` …) in `dev`, if any.
fn gpu_node(dev: &std::path::Path) -> Option<String> {
    std::fs::read_dir(dev).ok()?.flatten().find_map(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.strip_prefix("nvidia")
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
            .then_some(n)
    })
}

/// The device and dtype `[model]` asks for (see [`DType::kind`]).
pub fn select(device: &str, dtype: DType) -> Result<(Device, tch::Kind), DeviceError> {
    let d = resolve(device)?;
    Ok((d, dtype.kind(d)))
}

impl DType {
    /// The libtorch kind on `device`: `auto` is bf16 on CUDA and on a CPU with
    /// native bf16 arithmetic, f32 elsewhere (on an AVX2-only CPU libtorch's
    /// bf16 evaluates 5.5x and trains over 25x slower than f32).
    pub fn kind(self, device: Device) -> tch::Kind {
        match self {
            DType::Auto if device.is_cuda() || cpu_bf16().is_some() => tch::Kind::BFloat16,
            DType::Auto | DType::F32 => tch::Kind::Float,
            DType::Bf16 => tch::Kind::BFloat16,
            DType::F16 => tch::Kind::Half,
        }
    }

    /// Why `auto` chose what it did on `device`, for the start-up log line.
    pub fn reason(self, device: Device) -> String {
        match (self, cpu_bf16()) {
            (DType::Auto, _) if device.is_cuda() => "auto: bf16 on CUDA".into(),
            (DType::Auto, Some(flag)) => format!("auto: the CPU has native bf16 ({flag})"),
            (DType::Auto, None) => {
                "auto: the CPU has no native bf16 (avx512_bf16, amx_bf16)".into()
            }
            (other, _) => format!("{other} as configured"),
        }
    }
}

/// The CPU flag that gives native bf16 arithmetic (`amx_bf16`, `avx512_bf16`),
/// read once from `/proc/cpuinfo`; `None` elsewhere or without one.
pub fn cpu_bf16() -> Option<&'static str> {
    static FLAG: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        bf16_flag(&info)
    })
}

fn bf16_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))?
        .split_once(':')?
        .1;
    ["amx_bf16", "avx512_bf16"]
        .into_iter()
        .find(|f| flags.split_whitespace().any(|x| x == *f))
}

/// The kind of the single-token decode copies for a model of `kind` on
/// `device` (see `CausalLm::set_decode_kind`): bf16 for an f32 model on the
/// CPU when `wanted`, none otherwise (on CUDA or in bf16 there is nothing to halve).
pub fn decode_kind(device: Device, kind: tch::Kind, wanted: bool) -> Option<tch::Kind> {
    (wanted && device == Device::Cpu && kind == tch::Kind::Float).then_some(tch::Kind::BFloat16)
}

/// The dtype the serving copy of the model loads in. On the CPU, `auto`
/// with bf16 decode copies (`decode_bf16`) is f32: the matmuls of decoding
/// steps read the bf16 copies either way, and libtorch's CPU attention and
/// norms in bf16 cost more than the halved weights save (measured on an
/// AVX512_BF16 CPU, SmolLM2-135M, a 16-row decoding step: 54 ms f32 with bf16
/// copies, 75 ms bf16; one row: 30 vs 36 ms). Elsewhere, as configured.
pub fn serving_dtype(device: Device, dtype: DType, decode_bf16: bool) -> DType {
    match dtype {
        DType::Auto if device == Device::Cpu && decode_bf16 => DType::F32,
        other => other,
    }
}

/// Sets libtorch's intra-op thread count; 0 means one per core.
pub fn set_threads(threads: usize) {
    let n = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    tch::set_num_threads(n as i32);
}

/// Facts about the libtorch this binary runs on.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeInfo {
    /// The libtorch `lib/` directory the binary was linked against (its rpath).
    pub libtorch_lib: &'static str,
    pub cuda_devices: usize,
    pub cudnn: bool,
    pub threads: i32,
}

pub fn runtime_info() -> RuntimeInfo {
    RuntimeInfo {
        libtorch_lib: env!("LORASTREAM_LIBTORCH_LIB"),
        cuda_devices: tch::Cuda::device_count().max(0) as usize,
        cudnn: tch::Cuda::cudnn_is_available(),
        threads: tch::get_num_threads(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn gpu_nodes_are_found_by_name() {
        let d = tempfile::tempdir().unwrap();
        for n in ["nvidiactl", "nvidia-uvm", "nvidia-caps"] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        assert_eq!(gpu_node(d.path()), None);
        std::fs::write(d.path().join("nvidia0"), "").unwrap();
        assert_eq!(gpu_node(d.path()).as_deref(), Some("nvidia0"));
    }

    #[test]
    fn resolves_device_specs() {
        assert_eq!(resolve("cpu").unwrap(), Device::Cpu);
        let auto = resolve("auto").unwrap();
        assert_eq!(auto.is_cuda(), tch::Cuda::device_count() > 0);
        assert!(matches!(resolve("tpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(resolve("cuda:x"), Err(DeviceError::Unknown(_))));
        assert!(matches!(
            resolve("cuda:99"),
            Err(DeviceError::Unavailable { .. })
        ));
    }

    #[test]
    fn dtype_auto_follows_the_cpu() {
        // What this machine has, read here on its own (not through `cpu_bf16`):
        // lscpu's view when it is installed, else the kernel's flags.
        let info = std::process::Command::new("lscpu")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|| std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
        let native = info.contains(" avx512_bf16") || info.contains(" amx_bf16");
        let auto = if native { Kind::BFloat16 } else { Kind::Float };
        assert_eq!(select("cpu", DType::Auto).unwrap(), (Device::Cpu, auto));
        assert_eq!(
            select("cpu", DType::F32).unwrap(),
            (Device::Cpu, Kind::Float)
        );
        assert_eq!(
            bf16_flag("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n"),
            Some("avx512_bf16")
        );
        assert_eq!(
            bf16_flag("processor: 0\nflags : fpu amx_bf16 avx512_bf16\n"),
            Some("amx_bf16")
        );
        assert_eq!(bf16_flag("flags : fpu avx2 fma avx512_bf16x\n"), None);
        assert_eq!(bf16_flag(""), None);
        assert_eq!(
            select("cpu", DType::Bf16).unwrap(),
            (Device::Cpu, Kind::BFloat16)
        );
        assert!(select("gpu", DType::Auto).is_err());
    }

    #[test]
    fn libtorch_computes_on_cpu() {
        set_threads(1);
        assert_eq!(tch::get_num_threads(), 1);
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let b = a.matmul(&a.transpose(0, 1));
        // [[1,2],[3,4]] @ [[1,3],[2,4]] = [[5,11],[11,25]]
        let got: Vec<f32> = b.flatten(0, 1).try_into().unwrap();
        assert_eq!(got, vec![5.0, 11.0, 11.0, 25.0]);
        let x = Tensor::from_slice(&[0.5f32, -1.0, 2.0]).set_requires_grad(true);
        let y = (&x * &x).sum(Kind::Float);
        y.backward();
        let g: Vec<f32> = x.grad().try_into().unwrap();
        assert_eq!(g, vec![1.0, -2.0, 4.0]);
    }
}
