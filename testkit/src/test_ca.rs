//! A throwaway certificate authority for TLS tests, made with the `openssl`
//! command-line tool: a self-signed CA and server certificates it signs for
//! one DNS name. Keys are P-256 (fast to make) and certificates valid for two
//! days; everything lives in a scratch directory removed on drop.
//!
//! Invariant: a [`ServerCert`] carries its name as a DNS subjectAltName
//! (what TLS clients match, not the CN) and is usable for server auth only.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::envoy::ScratchDir;

const VALID_DAYS: &str = "2";

/// A CA certificate and key; see the module docs.
pub struct TestCa {
    cert: PathBuf,
    key: PathBuf,
    dir: ScratchDir,
}

/// A certificate a [`TestCa`] signed, and its private key (PEM files).
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA whose subject is `CN=<common_name>`. Panics, saying why, if
    /// `openssl` is missing or fails.
    pub fn create(common_name: &str) -> TestCa {
        Self::try_create(common_name).unwrap_or_else(|error| panic!("{error}"))
    }

    /// [`Self::create`] for a caller that goes on without TLS (the local
    /// stack's demo provider): why it failed instead of a panic.
    pub fn try_create(common_name: &str) -> Result<TestCa, String> {
        let dir = ScratchDir::create()
            .map_err(|error| format!("cannot make a directory for the CA: {error}"))?;
        let cert = dir.join("ca.crt");
        let key = dir.join("ca.key");
        run(openssl(&["req", "-x509"])
            .args(NEW_P256_KEY)
            .args(["-days", VALID_DAYS, "-subj", &format!("/CN={common_name}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert))?;
        Ok(TestCa { cert, key, dir })
    }

    /// The CA certificate (PEM): what a client that trusts this CA is given.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// The directory holding the CA's and its certificates' files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `dns_name`, signed by this CA.
    pub fn issue(&self, dns_name: &str) -> ServerCert {
        self.try_issue(dns_name)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// [`Self::issue`], failing with why instead of panicking.
    pub fn try_issue(&self, dns_name: &str) -> Result<ServerCert, String> {
        let stem = dns_name.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let file = |extension: &str| self.dir.join(&format!("{stem}.{extension}"));
        let (key, csr, cert, extensions) = (file("key"), file("csr"), file("crt"), file("ext"));
        std::fs::write(
            &extensions,
            format!(
                "subjectAltName=DNS:{dns_name}\n\
                 extendedKeyUsage=serverAuth\n\
                 basicConstraints=critical,CA:FALSE\n"
            ),
        )
        .map_err(|error| format!("cannot write {extensions:?}: {error}"))?;
        run(openssl(&["req", "-new"])
            .args(NEW_P256_KEY)
            .args(["-subj", &format!("/CN={dns_name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr))?;
        run(
            openssl(&["x509", "-req", "-CAcreateserial", "-days", VALID_DAYS])
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&self.cert)
                .arg("-CAkey")
                .arg(&self.key)
                .arg("-extfile")
                .arg(&extensions)
                .arg("-out")
                .arg(&cert),
        )?;
        Ok(ServerCert { cert, key })
    }
}

/// `openssl` arguments for a new, unencrypted P-256 key.
const NEW_P256_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn openssl(args: &[&str]) -> Command {
    let mut command = Command::new("openssl");
    command.args(args);
    command
}

/// Runs an `openssl` command: its output if it fails, or a hint if
/// `openssl` is not installed.
fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|error| {
        format!(
            "certificates are made with the `openssl` command, which could not be run \
             ({error}); install OpenSSL's command-line tool"
        )
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}
