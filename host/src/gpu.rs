//! GPU telemetry through NVML (nvml-wrapper, which loads `libnvidia-ml.so` at run time).
//! Where it answers, every replica with a `device_mask` gets `gpu_utilization` and
//! `vram_used_bytes` per device, and its free VRAM goes into placement snapshots. Without a
//! driver the daemon says so in one log line and those series are simply absent.

use std::sync::{Arc, Weak};
use std::time::Duration;

use nvml_wrapper::Nvml;

use crate::pool::Pool;

/// How often devices are sampled.
const INTERVAL: Duration = Duration::from_secs(5);

pub struct Gpus {
    nvml: Nvml,
    count: u32,
}

/// One device, as sampled.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub utilization_percent: u32,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

impl Gpus {
    /// NVML if a driver answers; otherwise `None` after one log line.
    pub fn init() -> Option<Arc<Self>> {
        match Nvml::init() {
            Ok(nvml) => {
                let count = nvml.device_count().unwrap_or(0);
                let driver = nvml.sys_driver_version().unwrap_or_default();
                tracing::info!(devices = count, driver = %driver, "GPU telemetry on (NVML)");
                Some(Arc::new(Self { nvml, count }))
            }
            Err(e) => {
                tracing::info!(
                    reason = %e,
                    "GPU telemetry off: NVML is not available (no NVIDIA driver); \
                     gpu_utilization and vram_used_bytes are not exported"
                );
                None
            }
        }
    }

    pub fn device_count(&self) -> u32 {
        self.count
    }

    pub fn sample(&self, index: u32) -> Option<Sample> {
        let device = self.nvml.device_by_index(index).ok()?;
        let memory = device.memory_info().ok()?;
        let utilization = device.utilization_rates().map(|u| u.gpu).unwrap_or(0);
        Some(Sample {
            utilization_percent: utilization,
            used_bytes: memory.used,
            free_bytes: memory.free,
        })
    }
}

/// Device indices of a replica's mask (`"0,1"`); ids that are not indices are skipped.
pub fn devices_of(mask: &str) -> Vec<u32> {
    mask.split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect()
}

/// Samples every replica's devices on an interval until the pools are gone.
pub fn spawn_poller(gpus: Arc<Gpus>, pools: Vec<Weak<Pool>>) {
    tokio::spawn(async move {
        loop {
            let live: Vec<Arc<Pool>> = pools.iter().filter_map(Weak::upgrade).collect();
            if live.is_empty() {
                return;
            }
            let g = Arc::clone(&gpus);
            let _ = tokio::task::spawn_blocking(move || sample_pools(&g, &live)).await;
            tokio::time::sleep(INTERVAL).await;
        }
    });
}

fn sample_pools(gpus: &Gpus, pools: &[Arc<Pool>]) {
    for pool in pools {
        for replica in &pool.replicas {
            let Some(mask) = &replica.device_mask else {
                continue;
            };
            let version = replica.engine_version();
            let mut free = 0u64;
            let mut seen = false;
            for index in devices_of(mask) {
                let Some(s) = gpus.sample(index) else {
                    continue;
                };
                seen = true;
                free = free.saturating_add(s.free_bytes);
                let device = index.to_string();
                crate::metrics::gpu(
                    [&pool.engine, &version, &pool.id, &replica.id, &device],
                    s.utilization_percent,
                    s.used_bytes,
                );
            }
            replica.set_vram_free(seen.then_some(free));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_name_device_indices() {
        assert_eq!(devices_of("0,1"), [0, 1]);
        assert_eq!(devices_of(" 2 , gpu-x,3"), [2, 3]);
        assert!(devices_of("").is_empty());
    }

    #[test]
    fn without_a_driver_there_is_no_telemetry_and_no_panic() {
        // On machines with a driver this samples device 0 instead.
        match Gpus::init() {
            None => {}
            Some(g) if g.device_count() > 0 => {
                let s = g.sample(0).expect("device 0 samples");
                assert!(s.used_bytes + s.free_bytes > 0);
                assert!(s.utilization_percent <= 100);
            }
            Some(_) => {}
        }
    }
}
