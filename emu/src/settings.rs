//! The emulator's settings, read once from the environment.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `DROPLESS_EMU_DEVICES` | 1 | how many devices the driver reports |
//! | `DROPLESS_EMU_MEMORY_MIB` | 16384 | each device's memory size |
//! | `DROPLESS_EMU_SEED` | unset | unset: CTAs and warps run in a fixed order; a number: the order (and the points where a warp yields) is shuffled from that seed |
//! | `DROPLESS_EMU_PROFILE` | unset | `1`: print each launch's profile to stderr |
//! | `DROPLESS_EMU_CHECKS` | `all` | `all`, or `none` (memory bounds are always checked: the emulator itself must never touch memory outside an allocation) |

use std::sync::OnceLock;

/// The settings of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Devices the driver reports.
    pub devices: usize,
    /// Memory per device, in bytes.
    pub memory_bytes: u64,
    /// The scheduling seed (`None`: deterministic fixed order).
    pub seed: Option<u64>,
    /// Print a profile of every launch.
    pub profile: bool,
    /// Run the sanitizer checks (races, uninitialised shared reads, cp.async
    /// reads before the wait, `.nc` aliasing); bounds are checked always.
    pub checks: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            devices: 1,
            memory_bytes: 16384 << 20,
            seed: None,
            profile: false,
            checks: true,
        }
    }
}

impl Settings {
    /// Reads the settings from a variable lookup (the environment, or a map
    /// in tests). An unreadable value is an error naming the variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut s = Settings::default();
        let number = |name: &str| -> Result<Option<u64>, String> {
            get(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("{name}={v:?}: expected a whole number"))
                })
                .transpose()
        };
        if let Some(n) = number("DROPLESS_EMU_DEVICES")? {
            if n == 0 || n > 64 {
                return Err(format!("DROPLESS_EMU_DEVICES={n}: expected 1 to 64"));
            }
            s.devices = n as usize;
        }
        if let Some(mib) = number("DROPLESS_EMU_MEMORY_MIB")? {
            s.memory_bytes = mib
                .checked_mul(1 << 20)
                .ok_or_else(|| format!("DROPLESS_EMU_MEMORY_MIB={mib}: too large"))?;
        }
        s.seed = number("DROPLESS_EMU_SEED")?;
        s.profile = get("DROPLESS_EMU_PROFILE").is_some_and(|v| v == "1");
        match get("DROPLESS_EMU_CHECKS").as_deref() {
            None | Some("all") => {}
            Some("none") => s.checks = false,
            Some(v) => return Err(format!("DROPLESS_EMU_CHECKS={v:?}: expected all or none")),
        }
        Ok(s)
    }

    /// The settings of this process, read from the environment on first use;
    /// an unreadable value is reported on stderr and the default used.
    pub fn global() -> &'static Settings {
        static SETTINGS: OnceLock<Settings> = OnceLock::new();
        SETTINGS.get_or_init(|| {
            Settings::from_lookup(|k| std::env::var(k).ok()).unwrap_or_else(|e| {
                eprintln!("dropless-emu: {e}; using the default settings");
                Settings::default()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(read(&[]).unwrap(), Settings::default());
        let s = read(&[
            ("DROPLESS_EMU_DEVICES", "4"),
            ("DROPLESS_EMU_MEMORY_MIB", "2"),
            ("DROPLESS_EMU_SEED", "7"),
            ("DROPLESS_EMU_PROFILE", "1"),
            ("DROPLESS_EMU_CHECKS", "none"),
        ])
        .unwrap();
        assert_eq!(
            s,
            Settings {
                devices: 4,
                memory_bytes: 2 << 20,
                seed: Some(7),
                profile: true,
                checks: false
            }
        );
        assert!(read(&[("DROPLESS_EMU_DEVICES", "0")]).is_err());
        assert!(read(&[("DROPLESS_EMU_SEED", "x")]).is_err());
        assert!(read(&[("DROPLESS_EMU_CHECKS", "some")]).is_err());
    }
}
