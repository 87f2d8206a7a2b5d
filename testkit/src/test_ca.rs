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
        let dir = ScratchDir::create().expect("a scratch dir for the test CA");
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
            .arg(&cert));
        TestCa { cert, key, dir }
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
        .unwrap_or_else(|error| panic!("cannot write {extensions:?}: {error}"));
        run(openssl(&["req", "-new"])
            .args(NEW_P256_KEY)
            .args(["-subj", &format!("/CN={dns_name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr));
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
        );
        ServerCert { cert, key }
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

/// Runs an `openssl` command; panics with its output if it fails, or with
/// a hint if `openssl` is not installed.
fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|error| {
        panic!(
            "the TLS tests make their certificates with the `openssl` command, which \
             could not be run ({error}); install OpenSSL's command-line tool"
        )
    });
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
