//! Local images for the docker runtime, built from our own binaries.
//!
//! No image is ever pulled: the workspace image is a root filesystem assembled from
//! the workspace-agent, the shared libraries it links (as `ldd` lists them) and
//! Debian's statically linked busybox for a shell and coreutils; the proxy image
//! holds only the credential-proxy and its libraries. Each image is tagged with a
//! hash of everything that goes into it, so it is rebuilt only when a binary changes.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest, Sha256};

/// Where Debian's `busybox-static` installs the static busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Image repository names; the tag is the content hash.
pub const WORKSPACE_REPO: &str = "berth/workspace";
pub const PROXY_REPO: &str = "berth/credential-proxy";

/// What goes into one image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Repository name, e.g. `berth/workspace`.
    pub repo: String,
    /// (file on this machine, absolute path inside the image). Executables' shared
    /// libraries are added automatically.
    pub files: Vec<(PathBuf, String)>,
    /// Add busybox at /bin/busybox with a link for each of its applets.
    pub with_busybox: bool,
    /// Empty directories to create (with mode 1777 for /tmp).
    pub dirs: Vec<String>,
    /// `USER` of the image, e.g. `1000:1000`.
    pub user: String,
    pub entrypoint: Vec<String>,
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path} not found: {hint}")]
    MissingInput { path: PathBuf, hint: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot prepare build context in {dir}: {source}")]
    Context {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

/// Builds the image unless one with the same content hash exists; returns `repo:tag`.
pub fn ensure_image(spec: &ImageSpec) -> Result<String, ImageError> {
    let mut files = spec.files.clone();
    if spec.with_busybox {
        files.push((PathBuf::from(BUSYBOX), "/bin/busybox".into()));
    }
    let mut libs = BTreeSet::new();
    for (src, _) in &files {
        if !src.exists() {
            let hint = if src == Path::new(BUSYBOX) {
                "install Debian's busybox-static (apt-get install busybox-static)".to_owned()
            } else {
                "build it first (cargo build)".to_owned()
            };
            return Err(ImageError::MissingInput {
                path: src.clone(),
                hint,
            });
        }
        libs.extend(shared_libraries(src)?);
    }
    for lib in libs {
        let inside = lib.to_string_lossy().into_owned();
        files.push((lib, inside));
    }
    let dockerfile = dockerfile(spec);
    let tag = content_hash(&files, &dockerfile)?;
    let reference = format!("{}:{tag}", spec.repo);
    if image_exists(&reference) {
        return Ok(reference);
    }
    let dir = std::env::temp_dir().join(format!("berth-image-{tag}-{}", std::process::id()));
    let result = build_context(&dir, spec, &files, &dockerfile).and_then(|()| {
        run(Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args([
                "build",
                "-q",
                "--label",
                "berth.managed=1",
                "-t",
                &reference,
            ])
            .arg(&dir))
    });
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|_| reference)
}

/// The standard workspace image: agent + busybox, user 1000.
pub fn workspace_spec(agent_binary: &Path) -> ImageSpec {
    ImageSpec {
        repo: WORKSPACE_REPO.into(),
        files: vec![(
            agent_binary.to_path_buf(),
            "/usr/local/bin/workspace-agent".into(),
        )],
        with_busybox: true,
        dirs: vec!["/workspace".into(), "/tmp".into(), "/etc".into()],
        user: "1000:1000".into(),
        entrypoint: vec!["/usr/local/bin/workspace-agent".into()],
    }
}

/// The standard proxy image: proxy only, user [`berth_wire::uids::PROXY`].
/// The system's CA bundle, copied into the proxy image when the build machine has
/// one, so that the proxy verifies Secrets Manager's certificate.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub fn proxy_spec(proxy_binary: &Path) -> ImageSpec {
    let mut files = vec![(
        proxy_binary.to_path_buf(),
        "/usr/local/bin/credential-proxy".into(),
    )];
    if Path::new(CA_BUNDLE).is_file() {
        files.push((PathBuf::from(CA_BUNDLE), CA_BUNDLE.into()));
    }
    ImageSpec {
        repo: PROXY_REPO.into(),
        files,
        with_busybox: false,
        dirs: vec!["/tmp".into()],
        user: format!("{0}:{0}", berth_wire::uids::PROXY),
        entrypoint: vec!["/usr/local/bin/credential-proxy".into()],
    }
}

fn dockerfile(spec: &ImageSpec) -> String {
    let entry = serde_json::to_string(&spec.entrypoint).unwrap_or_default();
    format!(
        "FROM scratch\nCOPY rootfs/ /\nUSER {}\nENV PATH=/usr/local/bin:/usr/bin:/bin\nENTRYPOINT {entry}\n",
        spec.user
    )
}

/// Shared libraries an executable loads, as `ldd` resolves them (none for static files).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| ImageError::Command {
            command: "ldd".into(),
            detail: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn content_hash(files: &[(PathBuf, String)], dockerfile: &str) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    h.update(dockerfile.as_bytes());
    for (src, inside) in files {
        let bytes = std::fs::read(src).map_err(|source| ImageError::Read {
            path: src.clone(),
            source,
        })?;
        h.update(inside.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(hex::encode(&h.finalize()[..6]))
}

fn build_context(
    dir: &Path,
    spec: &ImageSpec,
    files: &[(PathBuf, String)],
    dockerfile: &str,
) -> Result<(), ImageError> {
    let ctx = |source| ImageError::Context {
        dir: dir.to_path_buf(),
        source,
    };
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(ctx)?;
    std::fs::write(dir.join("Dockerfile"), dockerfile).map_err(ctx)?;
    for d in &spec.dirs {
        let p = rootfs.join(d.trim_start_matches('/'));
        std::fs::create_dir_all(&p).map_err(ctx)?;
        use std::os::unix::fs::PermissionsExt;
        let mode = if d == "/tmp" { 0o1777 } else { 0o755 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(ctx)?;
    }
    for (src, inside) in files {
        let dst = rootfs.join(inside.trim_start_matches('/'));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(ctx)?;
        }
        std::fs::copy(src, &dst).map_err(ctx)?;
    }
    if spec.with_busybox {
        let list = run(Command::new(BUSYBOX).arg("--list"))?;
        let bin = rootfs.join("bin");
        for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
            let link = bin.join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", &link).map_err(ctx)?;
            }
        }
        let etc = rootfs.join("etc");
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nworkspace:x:1000:1000:workspace:/workspace:/bin/sh\nproxy:x:2000:2000:credential-proxy:/:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .map_err(ctx)?;
        std::fs::write(
            etc.join("group"),
            "root:x:0:\nworkspace:x:1000:\nproxy:x:2000:\nnogroup:x:65534:\n",
        )
        .map_err(ctx)?;
        // /usr/bin/env is where scripts look for interpreters.
        let usr_bin = rootfs.join("usr/bin");
        std::fs::create_dir_all(&usr_bin).map_err(ctx)?;
        std::os::unix::fs::symlink("/bin/busybox", usr_bin.join("env")).map_err(ctx)?;
    }
    Ok(())
}

fn image_exists(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| ImageError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(ImageError::Command {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_sets_user_and_entrypoint() {
        let spec = proxy_spec(Path::new("/x/credential-proxy"));
        let df = dockerfile(&spec);
        assert!(df.starts_with("FROM scratch\n"), "{df}");
        assert!(df.contains("USER 2000:2000\n"), "{df}");
        assert!(
            df.contains(r#"ENTRYPOINT ["/usr/local/bin/credential-proxy"]"#),
            "{df}"
        );
    }

    #[test]
    fn missing_binary_is_named_in_the_error() {
        let spec = proxy_spec(Path::new("/nonexistent/credential-proxy"));
        let err = ensure_image(&spec).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/credential-proxy"), "{err}");
        assert!(err.contains("cargo build"), "{err}");
    }

    #[test]
    fn hash_changes_with_content() {
        let dir = std::env::temp_dir().join(format!("berth-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bin");
        std::fs::write(&f, b"one").unwrap();
        let files = vec![(f.clone(), "/bin/x".to_owned())];
        let a = content_hash(&files, "FROM scratch").unwrap();
        std::fs::write(&f, b"two").unwrap();
        let b = content_hash(&files, "FROM scratch").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 12);
    }
}
