//! A description of the machine the figures come from.

use std::process::Command;

use serde_json::{Value, json};

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then_some(())?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

pub fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: Option<u64>,
    pub kernel: String,
    pub rustc: Option<String>,
    pub commit: Option<String>,
}

impl Machine {
    pub fn describe() -> Machine {
        let memory_mib = proc_field("/proc/meminfo", "MemTotal").and_then(|v| {
            v.split_whitespace()
                .next()
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb / 1024)
        });
        let commit = first_line("git", &["rev-parse", "--short=12", "HEAD"]).map(|c| {
            // Uncommitted changes make the commit an approximation: say so.
            let dirty = Command::new("git")
                .args(["status", "--porcelain", "--untracked-files=no"])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if dirty {
                format!("{c} (with uncommitted changes)")
            } else {
                c
            }
        });
        Machine {
            cpu: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_mib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| format!("Linux {}", s.trim()))
                .unwrap_or_else(|_| std::env::consts::OS.to_string()),
            rustc: first_line("rustc", &["--version"]),
            commit,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{}, {} cores, {} memory, {}",
            self.cpu,
            self.cores,
            self.memory_mib
                .map(|m| format!("{:.1} GiB", m as f64 / 1024.0))
                .unwrap_or_else(|| "? GiB".into()),
            self.kernel
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "cpu": self.cpu,
            "cores": self.cores,
            "memory_mib": self.memory_mib,
            "kernel": self.kernel,
            "rustc": self.rustc,
            "git_commit": self.commit,
        })
    }
}
