//! `--device cpu|cuda[:N]|auto`: what every `seqrec` command accepts, and
//! what it resolves to. `auto` (the default) is the first GPU when the
//! binary has the `cuda` feature and a GPU answers, else the CPU; the
//! resolution says which and why, for the log.

use candle_core::Device;

/// What `--device` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device `N`.
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("found `{s}`, expected cpu, cuda, cuda:N (N a GPU ordinal) or auto");
        match s.trim() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceChoice::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// True when this build has the `cuda` feature.
pub const HAS_CUDA: bool = cfg!(feature = "cuda");

/// The device `choice` names, and a line for the log saying which and why.
///
/// # Errors
/// `cuda` asked of a binary without the feature, or a GPU that does not answer.
pub fn resolve(choice: DeviceChoice) -> Result<(Device, String), String> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, "device: cpu (--device cpu)".into())),
        DeviceChoice::Cuda(n) => {
            if !HAS_CUDA {
                return Err(format!(
                    "--device cuda:{n}: this seqrec was built without the `cuda` feature; build it with \
                     `cargo build --release --features cuda` (../shared/docs/gpu.md) or use --device cpu"
                ));
            }
            Device::new_cuda(n)
                .map(|d| (d, format!("device: cuda:{n} (--device {choice})")))
                .map_err(|e| format!("--device cuda:{n}: no usable GPU: {}", first_line(&e)))
        }
        DeviceChoice::Auto => {
            if !HAS_CUDA {
                return Ok((Device::Cpu, "device: cpu (auto: built without the `cuda` feature)".into()));
            }
            match Device::new_cuda(0) {
                Ok(d) => Ok((d, "device: cuda:0 (auto: a GPU answered)".into())),
                Err(e) => Ok((Device::Cpu, format!("device: cpu (auto: no GPU answered: {})", first_line(&e)))),
            }
        }
    }
}

/// The first line of a candle error (its display may carry a backtrace).
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().trim().to_owned()
}

/// For tests of CUDA kernels: the first GPU, or `None` after printing why
/// the test is skipped (a build without the feature, or no GPU).
pub fn test_gpu() -> Option<Device> {
    if !HAS_CUDA {
        eprintln!("skipped: built without the `cuda` feature");
        return None;
    }
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no GPU answered ({})", first_line(&e));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_bad_ones_say_what_was_expected() {
        assert_eq!("cpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(3)));
        assert_eq!("auto".parse::<DeviceChoice>(), Ok(DeviceChoice::Auto));
        let err = "gpu".parse::<DeviceChoice>().unwrap_err();
        assert!(err.contains("found `gpu`, expected cpu, cuda, cuda:N"), "{err}");
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_always_resolves_and_auto_falls_back_to_it() {
        assert!(resolve(DeviceChoice::Cpu).unwrap().0.is_cpu());
        let (d, why) = resolve(DeviceChoice::Auto).unwrap();
        if !HAS_CUDA {
            assert!(d.is_cpu() && why.contains("without the `cuda` feature"), "{why}");
            let err = resolve(DeviceChoice::Cuda(0)).unwrap_err();
            assert!(err.contains("built without the `cuda` feature"), "{err}");
        }
    }
}
