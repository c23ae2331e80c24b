//! nginx in front of the cluster: `deploy/nginx.conf` (the file docker-compose.yml mounts as the
//! server config) with the test's node addresses, port and log paths, inside a main context of
//! the test's own (pid file, error log and temp paths in the test's dir).
//!
//! nginx runs as one process (`master_process off`): killing it on drop leaves no worker behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// The template, read where the test binary was built from.
const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf");

/// The nginx binary: `$NGINX`, else `nginx` on `PATH`, else Debian's `/usr/sbin/nginx`. `None`
/// (after [`skip`](crate::common::skip), which fails under `CI=true`) when there is none.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NGINX").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "NGINX={} is not a file", p.display());
        return Some(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file());
    if found.is_none() {
        crate::common::skip("nginx (Debian package nginx-light, or NGINX=/path/to/nginx)");
    }
    found
}

pub struct Nginx {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Nginx {
    /// Writes the config into `dir` and starts nginx on a free port in front of `ports`; returns
    /// once it accepts connections.
    pub async fn start(bin: &Path, dir: &Path, ports: &[u16]) -> Nginx {
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx dir");
        let port = super::free_port();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(dir, port, ports)).expect("write nginx.conf");
        let out = std::fs::File::create(dir.join("stderr.log")).expect("nginx stderr log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx {
            port,
            dir: dir.to_owned(),
            child,
        };
        nginx.wait_listening().await;
        nginx
    }

    async fn wait_listening(&mut self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", self.error_log());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("nginx does not listen:\n{}", self.error_log());
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The error log and whatever nginx wrote to stderr.
    pub fn error_log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }

    /// The access log (`upstream=` names the node of each request).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

/// The whole nginx.conf: a main context of the test's own around `deploy/nginx.conf`.
fn config(dir: &Path, port: u16, ports: &[u16]) -> String {
    let template = std::fs::read_to_string(TEMPLATE).expect("read deploy/nginx.conf");
    let d = dir.display();
    // The compose file's one `server api:10089 …;` (every replica, through Docker's DNS) becomes
    // one line per node, with the same parameters.
    let line = template
        .lines()
        .find(|l| l.trim_start().starts_with("server api:10089"))
        .expect("deploy/nginx.conf has an upstream `server api:10089` line");
    let servers: Vec<String> = ports
        .iter()
        .map(|p| line.replace("api:10089", &format!("127.0.0.1:{p}")))
        .collect();
    let server = replace_once(&template, line, &servers.join("\n"));
    let server = replace_once(&server, "listen 80;", &format!("listen 127.0.0.1:{port};"));
    let server = replace_once(
        &server,
        "access_log /var/log/nginx/access.log",
        &format!("access_log {d}/access.log"),
    );
    format!(
        "# Written by tests/e2e/cluster/nginx.rs around deploy/nginx.conf.\n\
         master_process off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{\n    worker_connections 1024;\n}}\n\
         http {{\n\
         client_body_temp_path {d}/tmp/body;\n\
         proxy_temp_path {d}/tmp/proxy;\n\
         fastcgi_temp_path {d}/tmp/fastcgi;\n\
         uwsgi_temp_path {d}/tmp/uwsgi;\n\
         scgi_temp_path {d}/tmp/scgi;\n\
         \n{server}\n}}\n"
    )
}

/// `text` with its one occurrence of `from` replaced; panics when the template no longer has
/// exactly one, so a change of `deploy/nginx.conf` cannot silently bypass the harness.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    let n = text.matches(from).count();
    assert_eq!(
        n, 1,
        "deploy/nginx.conf should contain {from:?} once, found {n}"
    );
    text.replacen(from, to, 1)
}
