//! The standard Prometheus process metrics, under the names every Prometheus client library
//! exports (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), so stock
//! dashboards and alerts work unchanged. Read from `/proc/self` at scrape time and rendered as
//! exposition text after the registry's: a counter of CPU seconds needs a fraction, which the
//! `metrics` facade's integer counters cannot carry. On a system without `/proc` nothing is
//! rendered (the series are absent, not zero).

use std::fmt::Write;

/// What one scrape reads about the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    /// Unix time the process started, seconds.
    pub start_time_seconds: f64,
    pub open_fds: Option<u64>,
    /// The soft `RLIMIT_NOFILE`.
    pub max_fds: Option<u64>,
}

/// The fields of `/proc/<pid>/stat` this module reads (proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime_ticks: u64,
    stime_ticks: u64,
    threads: u64,
    start_ticks_since_boot: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state): field N is `fields[N - 3]`.
    let field = |n: usize| -> Option<u64> { fields.get(n.checked_sub(3)?)?.parse().ok() };
    Some(Stat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        threads: field(20)?,
        start_ticks_since_boot: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// `btime` of `/proc/stat`: when the system booted, unix seconds.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse().ok()
}

/// Turns the raw readings into the sample (`ticks_per_second` is `sysconf(_SC_CLK_TCK)`).
fn sample_from(stat: Stat, boot_time: u64, ticks_per_second: u64, page_size: u64) -> ProcessSample {
    let ticks = ticks_per_second.max(1) as f64;
    ProcessSample {
        cpu_seconds: (stat.utime_ticks + stat.stime_ticks) as f64 / ticks,
        resident_bytes: stat.resident_pages.saturating_mul(page_size),
        virtual_bytes: stat.virtual_bytes,
        threads: stat.threads,
        start_time_seconds: boot_time as f64 + stat.start_ticks_since_boot as f64 / ticks,
        open_fds: None,
        max_fds: None,
    }
}

/// Reads the process's figures now; `None` where `/proc` cannot be read (not Linux).
pub fn sample() -> Option<ProcessSample> {
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let boot_time = parse_boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let ticks = rustix::param::clock_ticks_per_second();
    let page_size = rustix::param::page_size() as u64;
    let mut sample = sample_from(stat, boot_time, ticks, page_size);
    // The directory handle read_dir holds is one of the entries: not counted.
    sample.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|dir| (dir.count() as u64).saturating_sub(1));
    sample.max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    Some(sample)
}

/// Appends the process metrics (HELP, TYPE and value of each) to an exposition text.
pub fn render(out: &mut String) {
    if let Some(sample) = sample() {
        render_sample(&sample, out);
    }
}

fn render_sample(sample: &ProcessSample, out: &mut String) {
    let mut family = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n");
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        format!("{:.2}", sample.cpu_seconds),
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        sample.resident_bytes.to_string(),
    );
    family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", sample.virtual_bytes.to_string());
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        format!("{:.2}", sample.start_time_seconds),
    );
    family("process_threads", "gauge", "Number of OS threads in the process.", sample.threads.to_string());
    if let Some(open) = sample.open_fds {
        family("process_open_fds", "gauge", "Number of open file descriptors.", open.to_string());
    }
    if let Some(max) = sample.max_fds {
        family("process_max_fds", "gauge", "Maximum number of open file descriptors.", max.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line of `/proc/<pid>/stat`, with a command name holding a space and a parenthesis.
    const STAT: &str = "4242 (switch board) x) S 1 4242 4242 0 -1 4194560 2931 0 0 0 \
        350 125 0 0 20 0 7 0 123456 1048576000 3000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = parse_stat(STAT).unwrap();
        assert_eq!(
            stat,
            Stat {
                utime_ticks: 350,
                stime_ticks: 125,
                threads: 7,
                start_ticks_since_boot: 123_456,
                virtual_bytes: 1_048_576_000,
                resident_pages: 3000,
            }
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
    }

    #[test]
    fn the_sample_is_in_base_units() {
        let boot = parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1764500000\nprocesses 9\n").unwrap();
        let sample = sample_from(parse_stat(STAT).unwrap(), boot, 100, 4096);
        assert_eq!(sample.cpu_seconds, 4.75);
        assert_eq!(sample.resident_bytes, 3000 * 4096);
        assert_eq!(sample.start_time_seconds, 1_764_500_000.0 + 1234.56);
        assert_eq!(sample.threads, 7);
    }

    #[test]
    fn each_family_has_help_type_and_one_value() {
        let sample = ProcessSample {
            cpu_seconds: 1.5,
            resident_bytes: 10,
            virtual_bytes: 20,
            threads: 3,
            start_time_seconds: 1.0,
            open_fds: Some(9),
            max_fds: None,
        };
        let mut text = String::new();
        render_sample(&sample, &mut text);
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.50\n"), "{text}");
        assert!(text.contains("process_open_fds 9\n"), "{text}");
        assert!(!text.contains("process_max_fds"), "an unknown limit is absent, not 0: {text}");
        assert_eq!(text.matches("# HELP ").count(), text.matches("# TYPE ").count());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_reads_plausibly() {
        let sample = sample().unwrap();
        assert!(sample.resident_bytes > 1 << 20, "{sample:?}");
        assert!(sample.open_fds.unwrap() >= 3, "{sample:?}");
        assert!(sample.max_fds.unwrap() >= sample.open_fds.unwrap(), "{sample:?}");
        assert!(sample.threads >= 1, "{sample:?}");
    }
}
