//! Throwaway certificates made with `openssl`, for the TLS tests.

use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`<name>-ca.pem`) and, signed by it, a certificate for 127.0.0.1 and
/// localhost (`<name>-server.pem`/`.key`) and a client certificate (`<name>-client.pem`/`.key`).
pub fn make_ca(dir: &Path, name: &str) {
    let ca = format!("{name}-ca");
    let (ca_key, ca_pem) = (format!("{ca}.key"), format!("{ca}.pem"));
    let subject = format!("/CN={ca}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject, "-keyout", &ca_key,
            "-out", &ca_pem,
        ],
    );
    std::fs::write(dir.join("server.cnf"), "subjectAltName = IP:127.0.0.1, DNS:localhost\n").unwrap();
    std::fs::write(dir.join("client.cnf"), "extendedKeyUsage = clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let base = format!("{name}-{who}");
        let (key, csr, pem, subject) =
            (format!("{base}.key"), format!("{base}.csr"), format!("{base}.pem"), format!("/CN={base}"));
        openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out", &csr]);
        let mut sign = vec!["x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial"];
        let extensions = format!("{who}.cnf");
        sign.extend(["-days", "2", "-out", &pem, "-extfile", &extensions]);
        openssl(dir, &sign);
    }
}
