//! What the agent measures: the [`Collector`] capability, its domain types, and
//! [`SysinfoCollector`], the implementation that reads the real machine through `sysinfo`.
//!
//! The types here are the agent's own; `convert.rs` turns them into wire messages. Other
//! collectors (a simulator generating synthetic machines, a fixed collector in tests) implement
//! the same trait.

use std::time::{Duration, SystemTime};

use sysinfo::{
    CpuRefreshKind, Disks, MemoryRefreshKind, Networks, ProcessRefreshKind, ProcessesToUpdate,
    RefreshKind, System,
};
use tether_proto::text::{self, MAX_DISKS_PER_SAMPLE, MAX_REPORTED_TEXT_BYTES};

/// Filesystem types that hold no disk space of the machine: memory, kernel interfaces, and
/// read-only images (snaps) that are always full.
const PSEUDO_FILESYSTEMS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.lxcfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// One mounted filesystem as the operating system lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountedFs {
    /// The device (`/dev/sda1`), or a name such as `overlay`.
    pub device: String,
    pub fs_type: String,
    pub mount_point: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// The disks a sample reports, each filesystem once: pseudo filesystems
/// ([`PSEUDO_FILESYSTEMS`]) and empty ones are left out; a device mounted more than once (bind
/// mounts, a bind-mounted file such as a container's `/etc/hosts`, btrfs subvolumes) counts
/// once, at its shortest mount point, so disk totals are not multiplied; mount points the
/// server cannot show (control or format characters, longer than the contract's default
/// limit) are left out; of more than [`MAX_DISKS_PER_SAMPLE`] filesystems the largest are
/// kept. Sorted by mount point.
pub fn usable_disks(mut mounts: Vec<MountedFs>) -> Vec<DiskUsage> {
    mounts.retain(|m| {
        m.total_bytes > 0
            && !PSEUDO_FILESYSTEMS.contains(&m.fs_type.as_str())
            && m.mount_point.len() <= MAX_REPORTED_TEXT_BYTES
            && text::first_forbidden(&m.mount_point).is_none()
    });
    // Shortest mount point first, so that each device keeps its outermost mount.
    mounts.sort_by(|a, b| {
        (a.mount_point.len(), &a.mount_point).cmp(&(b.mount_point.len(), &b.mount_point))
    });
    let mut seen_devices = std::collections::HashSet::new();
    let mut disks: Vec<DiskUsage> = mounts
        .into_iter()
        .filter(|m| {
            m.device.is_empty() || m.device == "none" || seen_devices.insert(m.device.clone())
        })
        .map(|m| DiskUsage {
            used_bytes: m.total_bytes.saturating_sub(m.available_bytes),
            total_bytes: m.total_bytes,
            mount_point: m.mount_point,
        })
        .collect();
    disks.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    disks.dedup_by(|a, b| a.mount_point == b.mount_point);
    if disks.len() > MAX_DISKS_PER_SAMPLE {
        disks.sort_by_key(|disk| std::cmp::Reverse(disk.total_bytes));
        disks.truncate(MAX_DISKS_PER_SAMPLE);
        disks.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    }
    disks
}

/// The agent's version, reported in `Hello` and `SystemInfo`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Source of machine identity and measurements.
///
/// Methods may block briefly (they read `/proc`); the agent calls them from a blocking thread.
pub trait Collector: Send + 'static {
    /// Describes the machine. Called before enrolling and at the start of every session.
    fn system_info(&mut self) -> SystemInfo;
    /// Takes one measurement. Called every metrics interval once the server has said `Welcome`.
    fn sample(&mut self) -> Sample;
    /// Whether [`Collector::sample`] may block (reads the machine): the agent then calls it on
    /// a blocking thread. Collectors that only compute (e.g. [`crate::SyntheticCollector`])
    /// return `false` and are called inline, which matters when one process simulates
    /// thousands of agents.
    fn blocks(&self) -> bool {
        true
    }
}

/// What the agent reports about the machine it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemInfo {
    /// Host name.
    pub hostname: String,
    /// Operating system or distribution name, e.g. `Debian GNU/Linux`.
    pub os_name: String,
    /// Operating system version, e.g. `12`.
    pub os_version: String,
    /// Kernel version.
    pub kernel_version: String,
    /// CPU architecture, e.g. `x86_64`.
    pub architecture: String,
    /// CPU brand string.
    pub cpu_model: String,
    /// Number of logical CPUs.
    pub logical_cores: u32,
    /// Installed memory in bytes.
    pub total_memory_bytes: u64,
    /// Stable hardware identity: `/etc/machine-id` where present, else a stable hash.
    pub hardware_id: String,
    /// When the machine booted, if known.
    pub boot_time: Option<SystemTime>,
    /// Version of the agent binary.
    pub agent_version: String,
}

/// Usage of one mounted filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Where the filesystem is mounted.
    pub mount_point: String,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Size in bytes.
    pub total_bytes: u64,
}

/// One point-in-time measurement. Its sequence number is assigned by the buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When the sample was taken.
    pub time: SystemTime,
    /// Global CPU usage since the previous sample, in percent of all cores.
    pub cpu_percent: f64,
    /// One-minute load average.
    pub load_1: f64,
    /// Five-minute load average.
    pub load_5: f64,
    /// Fifteen-minute load average.
    pub load_15: f64,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Installed memory, bytes.
    pub memory_total_bytes: u64,
    /// Swap in use, bytes.
    pub swap_used_bytes: u64,
    /// Swap size, bytes.
    pub swap_total_bytes: u64,
    /// Per-mount disk usage.
    pub disks: Vec<DiskUsage>,
    /// Bytes received since boot over non-loopback interfaces.
    pub network_rx_bytes: u64,
    /// Bytes sent since boot over non-loopback interfaces.
    pub network_tx_bytes: u64,
    /// Time since boot.
    pub uptime: Duration,
    /// Number of processes (threads excluded).
    pub process_count: u32,
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            time: SystemTime::UNIX_EPOCH,
            cpu_percent: 0.0,
            load_1: 0.0,
            load_5: 0.0,
            load_15: 0.0,
            memory_used_bytes: 0,
            memory_total_bytes: 0,
            swap_used_bytes: 0,
            swap_total_bytes: 0,
            disks: Vec::new(),
            network_rx_bytes: 0,
            network_tx_bytes: 0,
            uptime: Duration::ZERO,
            process_count: 0,
        }
    }
}

/// Reads the real machine through `sysinfo`.
///
/// Keeps its `System`, `Disks` and `Networks` between samples, so CPU usage is measured over
/// the interval between two samples.
pub struct SysinfoCollector {
    system: System,
    disks: Disks,
    networks: Networks,
}

// === impl SysinfoCollector ===

impl SysinfoCollector {
    /// Creates the collector and takes the first CPU reading, so the first sample has a
    /// baseline.
    pub fn new() -> Self {
        // sysinfo keeps every process's stat file open by default; an agent should not hold
        // hundreds of descriptors just to count processes.
        sysinfo::set_open_files_limit(0);
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::everything()),
        );
        Self {
            system,
            disks: Disks::new_with_refreshed_list(),
            networks: Networks::new_with_refreshed_list(),
        }
    }

    /// Usage of the mounted filesystems ([`usable_disks`]).
    fn disk_usage(&mut self) -> Vec<DiskUsage> {
        self.disks.refresh(true);
        let mounts = self
            .disks
            .list()
            .iter()
            .map(|disk| MountedFs {
                device: disk.name().to_string_lossy().into_owned(),
                fs_type: disk.file_system().to_string_lossy().into_owned(),
                mount_point: disk.mount_point().to_string_lossy().into_owned(),
                total_bytes: disk.total_space(),
                available_bytes: disk.available_space(),
            })
            .collect();
        usable_disks(mounts)
    }

    fn network_counters(&mut self) -> (u64, u64) {
        self.networks.refresh(true);
        self.networks
            .list()
            .iter()
            .filter(|(name, _)| !is_loopback(name))
            .fold((0, 0), |(rx, tx), (_, data)| {
                (
                    rx.saturating_add(data.total_received()),
                    tx.saturating_add(data.total_transmitted()),
                )
            })
    }

    fn process_count(&mut self) -> u32 {
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing(),
        );
        let n_processes = self
            .system
            .processes()
            .values()
            .filter(|process| process.thread_kind().is_none())
            .count();
        u32::try_from(n_processes).unwrap_or(u32::MAX)
    }
}

impl Default for SysinfoCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for SysinfoCollector {
    fn system_info(&mut self) -> SystemInfo {
        self.system.refresh_memory();
        let cpus = self.system.cpus();
        // What the machine says, as the server accepts it: printable and not too long.
        let clean = |text: &str| text::clean(text, MAX_REPORTED_TEXT_BYTES);
        let hostname = clean(&System::host_name().unwrap_or_default());
        let cpu_model = cpus
            .first()
            .map(|cpu| clean(cpu.brand().trim()))
            .unwrap_or_default();
        let architecture = clean(&System::cpu_arch());
        let total_memory_bytes = self.system.total_memory();
        let hardware_id = clean(&hardware_id(
            &hostname,
            &cpu_model,
            &architecture,
            total_memory_bytes,
        ));
        let boot_time = System::boot_time();
        SystemInfo {
            hostname,
            os_name: clean(&System::name().unwrap_or_else(|| std::env::consts::OS.to_owned())),
            os_version: clean(&System::os_version().unwrap_or_default()),
            kernel_version: clean(&System::kernel_version().unwrap_or_default()),
            architecture,
            cpu_model,
            logical_cores: u32::try_from(cpus.len()).unwrap_or(u32::MAX),
            total_memory_bytes,
            hardware_id,
            boot_time: (boot_time > 0)
                .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(boot_time)),
            agent_version: AGENT_VERSION.to_owned(),
        }
    }

    fn sample(&mut self) -> Sample {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let load = System::load_average();
        let (network_rx_bytes, network_tx_bytes) = self.network_counters();
        Sample {
            time: SystemTime::now(),
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            load_1: load.one,
            load_5: load.five,
            load_15: load.fifteen,
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            swap_used_bytes: self.system.used_swap(),
            swap_total_bytes: self.system.total_swap(),
            disks: self.disk_usage(),
            network_rx_bytes,
            network_tx_bytes,
            uptime: Duration::from_secs(System::uptime()),
            process_count: self.process_count(),
        }
    }
}

/// Loopback interfaces: `lo` on Linux, `lo0` on BSD and macOS.
fn is_loopback(name: &str) -> bool {
    name.strip_prefix("lo")
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit()))
}

/// The machine's stable identity: the systemd/dbus machine id where present, else the SMBIOS
/// product UUID, else an FNV-1a hash of what the machine says about itself.
fn hardware_id(hostname: &str, cpu_model: &str, architecture: &str, total_memory: u64) -> String {
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(id) = std::fs::read_to_string(path) {
            let id = id.trim();
            if !id.is_empty() {
                return id.to_owned();
            }
        }
    }
    if let Some(uuid) = sysinfo::Product::uuid().filter(|uuid| !uuid.trim().is_empty()) {
        return uuid.trim().to_owned();
    }
    let material = format!("{hostname}\n{cpu_model}\n{architecture}\n{total_memory}");
    format!("fnv1a:{:016x}", fnv1a_64(material.as_bytes()))
}

/// FNV-1a, 64 bit: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(device: &str, fs_type: &str, mount_point: &str, total_gib: u64) -> MountedFs {
        MountedFs {
            device: device.to_owned(),
            fs_type: fs_type.to_owned(),
            mount_point: mount_point.to_owned(),
            total_bytes: total_gib << 30,
            available_bytes: (total_gib << 30) / 2,
        }
    }

    #[test]
    fn each_filesystem_counts_once_and_pseudo_ones_not_at_all() {
        let disks = usable_disks(vec![
            mount("/dev/vda1", "ext4", "/etc/hosts", 100),
            mount("/dev/vda1", "ext4", "/", 100),
            mount("/dev/vda1", "ext4", "/var/lib/docker", 100),
            mount("/dev/vdb", "xfs", "/data", 500),
            mount("tmpfs", "tmpfs", "/run", 2),
            mount("/dev/loop3", "squashfs", "/snap/core/1", 1),
            mount("none", "nfs", "/mnt/a", 10),
            mount("none", "nfs", "/mnt/b", 10),
            mount("/dev/vdc", "ext4", "/empty", 0),
        ]);
        let mounts: Vec<&str> = disks.iter().map(|d| d.mount_point.as_str()).collect();
        assert_eq!(mounts, ["/", "/data", "/mnt/a", "/mnt/b"]);
        let total: u64 = disks.iter().map(|d| d.total_bytes).sum();
        assert_eq!(
            total,
            (100 + 500 + 10 + 10) << 30,
            "the bind mounts add nothing"
        );
        assert_eq!(disks[0].used_bytes, 50 << 30);
    }

    #[test]
    fn mount_points_the_server_refuses_are_left_out() {
        let disks = usable_disks(vec![
            mount("/dev/a", "ext4", "/bad\u{7}name", 1),
            mount(
                "/dev/b",
                "ext4",
                &format!("/{}", "x".repeat(MAX_REPORTED_TEXT_BYTES)),
                1,
            ),
            mount("/dev/c", "ext4", "/ok", 1),
        ]);
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].mount_point, "/ok");
    }

    #[test]
    fn loopback_names() {
        assert!(is_loopback("lo"));
        assert!(is_loopback("lo0"));
        assert!(!is_loopback("eth0"));
        assert!(!is_loopback("lowpan0"));
    }

    #[test]
    fn fnv_is_stable() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn sysinfo_collector_reports_this_machine() {
        let mut collector = SysinfoCollector::new();
        let info = collector.system_info();
        assert!(info.logical_cores > 0);
        assert!(info.total_memory_bytes > 0);
        assert!(!info.hardware_id.is_empty());
        assert_eq!(info.agent_version, AGENT_VERSION);
        let sample = collector.sample();
        assert!(sample.memory_total_bytes > 0);
        assert!(sample.process_count > 0);
        assert!((0.0..=100.0).contains(&sample.cpu_percent));
    }
}
