//! The HTTP endpoints behind TLS, client certificates and basic auth, set
//! by a Prometheus exporter web-config file, scraped by a real Prometheus.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result};
use connmon_tests::{
    alerting::{Alertmanager, Prometheus, TempDir, WebhookReceiver},
    connmon::{Daemon, binary},
    poll,
    scenario::SeedScenario,
    topology::Options,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};

const PASSWORD: &str = "correct horse battery staple";

/// A CA, a server certificate for 127.0.0.1, a client certificate, and a
/// web config requiring both the client certificate and a password.
fn write_pki(dir: &Path) -> Result<()> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subjects: a leaf named like its issuer looks self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "connmon test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;

    let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server
        .distinguished_name
        .push(DnType::CommonName, "connmon server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    std::fs::write(
        dir.join("server.crt"),
        server.signed_by(&server_key, &ca)?.pem(),
    )?;
    std::fs::write(dir.join("server.key"), server_key.serialize_pem())?;

    let mut client = CertificateParams::new(vec!["prometheus".to_string()])?;
    client
        .distinguished_name
        .push(DnType::CommonName, "prometheus");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    std::fs::write(
        dir.join("client.crt"),
        client.signed_by(&client_key, &ca)?.pem(),
    )?;
    std::fs::write(dir.join("client.key"), client_key.serialize_pem())?;

    let hash = bcrypt::hash(PASSWORD, 6)?;
    std::fs::write(
        dir.join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  prometheus: {hash}\n"
        ),
    )?;
    Ok(())
}

/// curl's HTTP status for `url` (`000` when no HTTP response came).
fn curl(dir: &Path, url: &str, extra: &[&str]) -> Result<String> {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(dir.join("ca.crt"))
        .args(extra)
        .arg(url)
        .output()
        .context("running curl")?;
    // Shown when an assertion on the status fails.
    eprintln!(
        "curl {url} {extra:?}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn tls_client_certificates_and_basic_auth_guard_the_endpoints() -> Result<()> {
    let dir = TempDir::new("web")?;
    write_pki(&dir.0)?;
    let web = dir.0.join("web.yml").to_string_lossy().into_owned();
    let connmon = Daemon::start(&["--web-config-file", &web])?;
    let base = format!("https://{}", connmon.listen);
    let cert = dir.0.join("client.crt").to_string_lossy().into_owned();
    let key = dir.0.join("client.key").to_string_lossy().into_owned();
    let client_cert = ["--cert", cert.as_str(), "--key", key.as_str()];
    let good_password = format!("prometheus:{PASSWORD}");
    fn with<'a>(client_cert: &[&'a str], user: &'a str) -> Vec<&'a str> {
        let mut args = client_cert.to_vec();
        args.extend(["-u", user]);
        args
    }

    let unknown_user = format!("nobody:{PASSWORD}");
    let metrics = format!("{base}/metrics");
    assert_eq!(
        curl(&dir.0, &metrics, &with(&client_cert, &good_password))?,
        "200"
    );
    assert_eq!(
        curl(&dir.0, &metrics, &with(&client_cert, "prometheus:wrong"))?,
        "401",
        "a wrong password"
    );
    assert_eq!(
        curl(&dir.0, &metrics, &with(&client_cert, &unknown_user))?,
        "401",
        "an unknown user"
    );
    assert_eq!(
        curl(&dir.0, &metrics, &client_cert)?,
        "401",
        "no credentials"
    );
    assert_eq!(
        curl(&dir.0, &format!("{base}/api/v1/storms"), &client_cert)?,
        "401",
        "the storms API is guarded too"
    );
    assert_eq!(
        curl(&dir.0, &format!("{base}/readyz"), &client_cert)?,
        "200",
        "probes need no password"
    );
    assert_eq!(
        curl(&dir.0, &metrics, &["-u", &good_password])?,
        "000",
        "no client certificate: no TLS session"
    );
    assert_eq!(
        curl(
            &dir.0,
            &format!("http://{}/metrics", connmon.listen),
            &["-u", &good_password]
        )?,
        "000",
        "no plain HTTP on a TLS port"
    );

    // A real Prometheus scrapes it with the same material.
    let prometheus = Prometheus::start_scraping(&scrape_job(&dir.0, connmon.listen))?;
    poll::until(
        "Prometheus to scrape connmon over TLS",
        Duration::from_secs(30),
        || prometheus.target_up().map(|up| up.then_some(())),
    )?;
    Ok(())
}

fn scrape_job(dir: &Path, target: SocketAddr) -> String {
    format!(
        "job_name: connmon\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n      \
         cert_file: {cert}\n      key_file: {key}\n    basic_auth:\n      username: prometheus\n      \
         password: {PASSWORD}\n    static_configs:\n      - targets: ['{target}']\n",
        ca = dir.join("ca.crt").display(),
        cert = dir.join("client.crt").display(),
        key = dir.join("client.key").display(),
    )
}

/// A web config connmon cannot honour is a start-up error: exit 2, one line
/// naming the problem.
#[test]
fn a_bad_web_config_is_exit_2_and_one_line() -> Result<()> {
    let dir = TempDir::new("web-bad")?;
    write_pki(&dir.0)?;
    let write = |name: &str, text: &str| -> Result<String> {
        let path = dir.0.join(name);
        std::fs::write(&path, text)?;
        Ok(path.to_string_lossy().into_owned())
    };
    let open = write("open.yml", "")?;
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    let cases = [
        (
            write(
                "mismatch.yml",
                "tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
            )?,
            "does not match the certificate",
        ),
        (
            write(
                "missing.yml",
                "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
            )?,
            "nope.crt",
        ),
        (
            write("plain.yml", "basic_auth_users:\n  alice: hunter2\n")?,
            "bcrypt",
        ),
        (open, "world-writable"),
    ];
    for (path, needle) in cases {
        let output = Command::new(binary())
            .args(["run", "--web-config-file", &path])
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{path}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{path}: {stderr}");
        assert!(stderr.contains("web_config_file"), "{path}: {stderr}");
        assert!(stderr.contains(needle), "{path}: {stderr}");
    }
    Ok(())
}

/// connmon pushes its alerts to an Alertmanager that only speaks HTTPS,
/// trusting the CA given with `--alert-ca-file` (without it, delivery fails
/// with `UnknownIssuer`).
#[test]
fn alerts_reach_an_https_alertmanager_through_the_given_ca() -> Result<()> {
    let dir = TempDir::new("web-am")?;
    write_pki(&dir.0)?;
    let am_web = dir.0.join("am-web.yml");
    std::fs::write(
        &am_web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            dir.0.join("server.crt").display(),
            dir.0.join("server.key").display()
        ),
    )?;
    let webhook = WebhookReceiver::start()?;
    let alertmanager = Alertmanager::start_tls(&webhook.url("/alertmanager"), &am_web)?;
    let url = format!("https://{}", alertmanager.addr);
    let ca = dir.0.join("ca.crt").to_string_lossy().into_owned();
    let mut scenario = SeedScenario::start(
        "https-am",
        &Options::default(),
        &["--alertmanager-url", &url, "--alert-ca-file", &ca],
    )?;
    scenario.resume_after_forgotten("set")?;
    let pid = scenario.client.pid();
    poll::until(
        "connmon's alert through the HTTPS Alertmanager",
        Duration::from_secs(60),
        || {
            Ok(webhook
                .bodies("/alertmanager")
                .iter()
                .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
                .find(|a| {
                    a["labels"]["source"] == "connmon"
                        && a["annotations"]["summary"]
                            .as_str()
                            .unwrap_or_default()
                            .contains(&format!("pid {pid}"))
                }))
        },
    )
    .with_context(|| format!("connmon stderr: {:?}", scenario.connmon.stderr()))?;
    Ok(())
}
