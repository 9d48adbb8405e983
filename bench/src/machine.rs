//! What the report says about the machine a run measured: CPU model and
//! count, memory, kernel, the load average when the run started (other
//! work on a shared machine moves every figure), and the CPU pinning in
//! force. Read from /proc on Linux; what cannot be read is left out.

use serde::Serialize;

/// The machine of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model name (`/proc/cpuinfo`).
    pub cpu_model: Option<String>,
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// Total memory in MiB (`/proc/meminfo`).
    pub memory_mib: Option<u64>,
    /// Kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: Option<String>,
    /// 1-, 5- and 15-minute load averages at the start (`/proc/loadavg`).
    pub load_average: Option<[f64; 3]>,
    /// `--broker-cpus`, if given: where the broker and peer servers ran.
    pub broker_cpus: Option<String>,
    /// `--load-cpus`, if given: where the load generator ran.
    pub load_cpus: Option<String>,
}

impl Machine {
    /// Reads the machine now.
    pub fn read(broker_cpus: Option<String>, load_cpus: Option<String>) -> Machine {
        let proc = |path: &str| std::fs::read_to_string(path).ok();
        let cpu_model = proc("/proc/cpuinfo").and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        });
        let memory_mib = proc("/proc/meminfo").and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
                .map(|kib| kib / 1024)
        });
        let kernel = proc("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned());
        let load_average = proc("/proc/loadavg").and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
            Some([it.next()??, it.next()??, it.next()??])
        });
        Machine {
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib,
            kernel,
            load_average,
            broker_cpus,
            load_cpus,
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "machine: {} x {}",
            self.cpus,
            self.cpu_model.as_deref().unwrap_or("unknown CPU")
        )?;
        if let Some(m) = self.memory_mib {
            write!(f, ", {:.1} GiB", m as f64 / 1024.0)?;
        }
        if let Some(k) = &self.kernel {
            write!(f, ", Linux {k}")?;
        }
        if let Some([a, b, c]) = self.load_average {
            write!(f, ", load average {a:.2} {b:.2} {c:.2}")?;
        }
        match (&self.broker_cpus, &self.load_cpus) {
            (None, None) => write!(f, ", no CPU pinning"),
            (b, l) => write!(
                f,
                ", broker on CPUs {}, load on CPUs {}",
                b.as_deref().unwrap_or("any"),
                l.as_deref().unwrap_or("any")
            ),
        }
    }
}
