//! The kernels `vm-test` boots: Debian's packaged kernels, fetched through
//! an apt configuration of the project's own (sources, lists and cache
//! under `.cache/vm/apt/`; the system's sources are never touched).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::tasks::run_checked;

/// One kernel series of the matrix and what connmon must choose on it.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    /// What `--kernel` takes, e.g. `6.1`.
    pub name: &'static str,
    /// Debian suite whose package lists carry it.
    pub suite: &'static str,
    /// Hooks (`kind/target`) and the state store (`store=...`) connmon
    /// must choose, as in its `hooks chosen for this kernel` line.
    pub expected_hooks: &'static [&'static str],
    /// Programs connmon must attach; fewer than nine means named
    /// degradations (tracepoints this kernel lacks).
    pub expected_programs: usize,
    /// Degradations connmon must name and export on this kernel
    /// (`connmon_degraded_hooks{hook=...}`).
    pub expected_degraded: &'static [&'static str],
    /// Why this kernel is left out of the default matrix (the whole suite
    /// and CI); `--kernel` still runs it.
    pub not_yet: Option<&'static str>,
}

/// Oldest first. Debian 11 (5.10), Debian 12 (6.1), Debian 13 (6.12).
pub const MATRIX: &[Series] = &[
    Series {
        name: "5.10",
        suite: "bullseye",
        expected_hooks: &[
            "fexit/tcp_sendmsg",
            "fexit/tcp_recvmsg",
            "tp_btf/tcp_retransmit_skb",
            // Tracing programs get bpf_sk_storage_get in 5.11 and
            // bpf_get_socket_cookie in 5.12: the by-address variants.
            "store=ByAddress",
        ],
        // No tcp_cong_state_set and inet_sk_error_report tracepoints.
        expected_programs: 7,
        expected_degraded: &[
            "tcp_cong_state_set",
            "inet_sk_error_report",
            "socket_local_storage",
        ],
        not_yet: None,
    },
    Series {
        name: "6.1",
        suite: "bookworm",
        expected_hooks: &[
            "fexit/tcp_sendmsg",
            "fexit/tcp_recvmsg",
            "tp_btf/tcp_retransmit_skb",
            "store=LocalStorage",
        ],
        expected_programs: 9,
        expected_degraded: &[],
        not_yet: None,
    },
    Series {
        name: "6.12",
        suite: "trixie",
        expected_hooks: &[
            "tp_btf/sock_send_length",
            "tp_btf/sock_recv_length",
            "tp_btf/tcp_retransmit_skb",
            "store=LocalStorage",
        ],
        expected_programs: 9,
        expected_degraded: &[],
        not_yet: None,
    },
];

/// The kernels the whole suite boots: the matrix without those not yet
/// supported.
pub fn default_matrix() -> Vec<Series> {
    MATRIX
        .iter()
        .copied()
        .filter(|series| series.not_yet.is_none())
        .collect()
}

/// The series `--kernel` names.
pub fn by_name(name: &str) -> Result<Series> {
    MATRIX
        .iter()
        .copied()
        .find(|series| series.name == name)
        .with_context(|| {
            let known: Vec<&str> = MATRIX.iter().map(|series| series.name).collect();
            format!(
                "no kernel {name} in the matrix (known: {})",
                known.join(", ")
            )
        })
}

impl Series {
    /// Package names of this series start so (`linux-image-6.1.` excludes
    /// `linux-image-6.12.`).
    fn package_prefix(&self) -> String {
        format!("linux-image-{}.", self.name)
    }

    /// Whether `name` is a generic amd64 image of this series (not `-rt`,
    /// `-cloud`, `-dbg` or `-unsigned`).
    fn is_image(&self, name: &str) -> bool {
        name.starts_with(&self.package_prefix())
            && name.ends_with("-amd64")
            && !name.contains("-rt-")
            && !name.contains("-cloud-")
    }
}

/// An unpacked kernel package.
pub struct Kernel {
    pub series: Series,
    /// e.g. `6.1.0-56-amd64`
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The directory holding `lib/modules/<release>` (the package root, or
    /// its `usr/` for merged-/usr packages such as Debian 13's).
    pub modules_base: PathBuf,
}

/// The newest package of `series` the lists know, downloaded once into
/// `.cache/vm/` and unpacked next to it. A cached package is used as is,
/// so reruns work offline and test the same kernel.
pub fn fetch(cache: &Path, series: Series) -> Result<Kernel> {
    let dir = cache.join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let deb = match cached_deb(&dir, series)? {
        Some(deb) => deb,
        None => {
            let apt = PrivateApt::new(&dir.join("apt"))?;
            let package = apt.newest(series)?;
            eprintln!("vm-test: downloading {package}");
            apt.download(&package, &dir)?;
            cached_deb(&dir, series)?
                .with_context(|| format!("apt-get download left no {package} package"))?
        }
    };
    let file_name = deb
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let release = release_of(&file_name).context("unexpected kernel package name")?;
    let root = dir.join(format!("linux-{release}"));
    // Debian 13's packages install modules under usr/lib (merged /usr).
    let modules_base = |root: &Path| {
        if root.join("usr/lib/modules").join(&release).is_dir() {
            root.join("usr")
        } else {
            root.to_path_buf()
        }
    };
    let done = root.join(".unpacked");
    if !done.is_file() {
        eprintln!("vm-test: unpacking {file_name}");
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        run_checked(
            Command::new("sh").arg("-c").arg(format!(
                "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}'",
                deb.display(),
                root.display()
            )),
            "unpacking the kernel package",
        )?;
        // modules.dep for `modprobe --show-depends` (the package leaves it to
        // its install hooks).
        run_checked(
            Command::new("depmod")
                .arg("-b")
                .arg(modules_base(&root))
                .arg(&release),
            "depmod",
        )?;
        fs::write(&done, b"")?;
    }
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} missing from {file_name}", vmlinuz.display());
    }
    Ok(Kernel {
        series,
        modules_base: modules_base(&root),
        release,
        vmlinuz,
    })
}

fn cached_deb(dir: &Path, series: Series) -> Result<Option<PathBuf>> {
    let mut debs: Vec<(Vec<u64>, PathBuf)> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter_map(|path| {
            let name = path.file_name()?.to_string_lossy().into_owned();
            let package = name.strip_suffix("_amd64.deb")?.split('_').next()?;
            series
                .is_image(package)
                .then(|| (version_key(package), path.clone()))
        })
        .collect();
    debs.sort();
    Ok(debs.pop().map(|(_, path)| path))
}

/// apt-get and apt-cache with the project's own sources, lists and cache.
struct PrivateApt {
    options: Vec<String>,
    lists: PathBuf,
}

impl PrivateApt {
    fn new(dir: &Path) -> Result<Self> {
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        for path in [lists.join("partial"), cache.join("archives/partial")] {
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let sources = dir.join("sources.list");
        let mut text = String::new();
        for series in MATRIX {
            text.push_str(&format!(
                "deb http://deb.debian.org/debian {0} main\n\
                 deb http://deb.debian.org/debian-security {0}-security main\n",
                series.suite
            ));
        }
        fs::write(&sources, text).with_context(|| format!("writing {}", sources.display()))?;
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/nonexistent".to_string(),
            format!("Dir::State::Lists={}", lists.display()),
            format!("Dir::Cache={}", cache.display()),
            // The download lands in the project's cache, which apt's
            // sandbox user may not be able to write.
            "APT::Sandbox::User=root".to_string(),
        ]
        .into_iter()
        .flat_map(|option| ["-o".to_string(), option])
        .collect();
        Ok(Self { options, lists })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.args(&self.options);
        command
    }

    /// The newest image of `series`, refreshing the lists once when they
    /// have none (a fresh cache).
    fn newest(&self, series: Series) -> Result<String> {
        let search = || -> Result<Option<String>> {
            let out = self
                .command("apt-cache")
                .args(["search", "--names-only", "^linux-image-"])
                .output()
                .context("running apt-cache search")?;
            Ok(newest_of(&String::from_utf8_lossy(&out.stdout), series))
        };
        let has_lists = fs::read_dir(&self.lists)
            .map(|entries| entries.filter_map(Result::ok).any(|e| e.path().is_file()))
            .unwrap_or(false);
        if has_lists && let Some(package) = search()? {
            return Ok(package);
        }
        run_checked(
            self.command("apt-get").args(["update", "-qq"]),
            "apt-get update",
        )?;
        search()?.with_context(|| {
            format!(
                "Debian {} lists no {}N-amd64 package",
                series.suite,
                series.package_prefix()
            )
        })
    }

    fn download(&self, package: &str, into: &Path) -> Result<()> {
        run_checked(
            self.command("apt-get")
                .current_dir(into)
                .args(["download", package]),
            "apt-get download",
        )
    }
}

/// `linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb` -> `6.1.0-56-amd64`.
fn release_of(deb_file_name: &str) -> Option<String> {
    let release = deb_file_name
        .strip_prefix("linux-image-")?
        .split('_')
        .next()?;
    (!release.is_empty()).then(|| release.to_string())
}

/// The numbers in a package name, in order: compares ABI and patch levels
/// numerically (-100 is newer than -99, `+deb13.1` newer than `+deb13`).
fn version_key(package: &str) -> Vec<u64> {
    // The architecture's digits (amd64) are not a version.
    package
        .trim_end_matches("-amd64")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|digits| digits.parse().ok())
        .collect()
}

/// The newest image of `series` in an `apt-cache search` listing.
fn newest_of(listing: &str, series: Series) -> Option<String> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| series.is_image(name))
        .max_by_key(|name| version_key(name))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_from_the_package_file_name() {
        assert_eq!(
            release_of("linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb").as_deref(),
            Some("6.1.0-56-amd64")
        );
        assert_eq!(release_of("busybox_1.35_amd64.deb"), None);
    }

    #[test]
    fn newest_package_compares_versions_within_the_series() {
        let listing = "linux-image-6.1.0-99-amd64 - Linux 6.1\n\
                       linux-image-6.1.0-100-amd64 - Linux 6.1\n\
                       linux-image-6.1.0-101-cloud-amd64 - cloud\n\
                       linux-image-6.1.0-102-rt-amd64 - rt\n\
                       linux-image-6.12.115+deb13-amd64 - Linux 6.12\n\
                       linux-image-6.12.115+deb13.1-amd64 - Linux 6.12\n\
                       linux-image-6.12.118+deb13-amd64-unsigned - unsigned\n\
                       linux-image-5.10.0-44-amd64 - Linux 5.10\n";
        assert_eq!(
            newest_of(listing, by_name("6.1").unwrap()).as_deref(),
            Some("linux-image-6.1.0-100-amd64")
        );
        assert_eq!(
            newest_of(listing, by_name("6.12").unwrap()).as_deref(),
            Some("linux-image-6.12.115+deb13.1-amd64")
        );
        assert_eq!(
            newest_of(listing, by_name("5.10").unwrap()).as_deref(),
            Some("linux-image-5.10.0-44-amd64")
        );
        assert_eq!(newest_of("", by_name("6.1").unwrap()), None);
    }

    #[test]
    fn unknown_series_is_an_error_naming_the_known_ones() {
        let error = by_name("4.19").unwrap_err().to_string();
        assert!(error.contains("5.10, 6.1, 6.12"), "{error}");
    }
}
