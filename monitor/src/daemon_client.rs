//! A client of a running daemon's HTTP API (`connmon top`, `connmon audit
//! --daemon-url`), speaking to it the way its web config asks: https with
//! a CA to check it against, a client certificate, basic auth.

use std::{path::Path, time::Duration};

use base64::Engine as _;

use crate::cli::DaemonClientArgs;

/// Where the basic auth password comes from: not a flag, which `ps` shows.
pub const PASSWORD_VARIABLE: &str = "CONNMON_DAEMON_PASSWORD";

pub struct DaemonClient {
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
}

impl DaemonClient {
    /// A client for the daemon at `url`; a bad CA, certificate or key is an
    /// error naming its flag.
    pub fn new(url: &str, args: &DaemonClientArgs, timeout: Duration) -> Result<Self, String> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = &args.daemon_ca_file {
            let certs = crate::config::read_ca_bundle(path)
                .map_err(|reason| format!("--daemon-ca-file {}: {reason}", path.display()))?;
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certificates(&certs)));
        }
        if let (Some(cert), Some(key)) = (&args.daemon_cert, &args.daemon_key) {
            let chain = crate::config::read_ca_bundle(cert)
                .map_err(|reason| format!("--daemon-cert {}: {reason}", cert.display()))?;
            let key = read_key(key)?;
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(
                &certificates(&chain),
                key,
            )));
        }
        let authorization = match &args.daemon_user {
            Some(user) => {
                let password = std::env::var(PASSWORD_VARIABLE).map_err(|_| {
                    format!("--daemon-user {user}: set the password in {PASSWORD_VARIABLE}")
                })?;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {token}"))
            }
            None => None,
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Self {
            agent,
            base: url.trim_end_matches('/').to_string(),
            authorization,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// The body of `GET <url><path>`; any failure (no answer, a status
    /// other than 200) as one line.
    pub fn get(&self, path: &str) -> Result<String, String> {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        request
            .call()
            .map_err(|error| error.to_string())?
            .body_mut()
            .read_to_string()
            .map_err(|error| error.to_string())
    }
}

fn certificates(ders: &[Vec<u8>]) -> Vec<ureq::tls::Certificate<'static>> {
    ders.iter()
        .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
        .collect()
}

fn read_key(path: &Path) -> Result<ureq::tls::PrivateKey<'static>, String> {
    let pem =
        std::fs::read(path).map_err(|error| format!("--daemon-key {}: {error}", path.display()))?;
    ureq::tls::PrivateKey::from_pem(&pem)
        .map_err(|error| format!("--daemon-key {}: {error}", path.display()))
}
