//! `scandium cert`: a development CA and node and client certificates with the SANs and
//! extended key usages TLS needs (docs/security.md), as `cockroach cert` makes them.
//!
//! The CA's key stays in the directory it was made in (`ca.key`): whoever holds it can
//! make certificates the cluster trusts. Certificates are ECDSA P-256.

use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Creates a CA in --dir: `ca.pem` (give it to every node and client) and `ca.key`.
    #[command(name = "create-ca")]
    Ca {
        #[command(flatten)]
        common: Common,
    },
    /// Creates `node.pem` and `node.key`, signed by the CA in --dir, for every HOST (IP
    /// address or DNS name) nodes and clients dial the node by: a node certificate serves
    /// (`serverAuth`) and dials other nodes (`clientAuth`).
    #[command(name = "create-node")]
    Node {
        #[command(flatten)]
        common: Common,
        /// Addresses and names the node is dialled by (`127.0.0.1`, `localhost`, `db1.example`).
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// Creates `client.NAME.pem` and `client.NAME.key`, signed by the CA in --dir, for a
    /// client (`clientAuth` only) whose identity is NAME.
    #[command(name = "create-client")]
    Client {
        #[command(flatten)]
        common: Common,
        /// The client's identity (its certificate's common name).
        name: String,
    },
}

#[derive(Args)]
struct Common {
    /// Directory of the CA and the certificates.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// Days the certificate is valid for [default: 3650 for a CA, 365 otherwise].
    #[arg(long)]
    days: Option<u32>,
    /// Replace files that exist.
    #[arg(long)]
    overwrite: bool,
}

/// The CA's common name: certificates name their issuer by it, so a CA loaded again from
/// its key signs certificates that chain to the `ca.pem` written at first.
const CA_NAME: &str = "Scandium CA";

pub fn run(args: CertArgs) -> Result<(), String> {
    match args.command {
        CertCommand::Ca { common } => {
            std::fs::create_dir_all(&common.dir)
                .map_err(|e| format!("cannot create {}: {e}", common.dir.display()))?;
            let ca = ca(None, common.days.unwrap_or(3650))?;
            let pem = ca.serialize_pem().map_err(|e| e.to_string())?;
            let (cert, key) = (common.dir.join("ca.pem"), common.dir.join("ca.key"));
            write(&cert, &pem, common.overwrite, false)?;
            write(&key, &ca.serialize_private_key_pem(), common.overwrite, true)?;
            println!("created {} and {} (keep the key safe)", cert.display(), key.display());
        }
        CertCommand::Node { common, hosts } => {
            let (cert, key) = issue(&common, "node", "node", &hosts, true)?;
            println!("created {} and {} for {}", cert.display(), key.display(), hosts.join(", "));
        }
        CertCommand::Client { common, name } => {
            let file = format!("client.{name}");
            let (cert, key) = issue(&common, &file, &name, &[], false)?;
            println!("created {} and {} for client {name}", cert.display(), key.display());
        }
    }
    Ok(())
}

/// Creates (with no key given) or loads (from `ca.key`'s PEM) the CA.
fn ca(key: Option<&str>, days: u32) -> Result<rcgen::Certificate, String> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new());
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, CA_NAME);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    valid_for(&mut params, days);
    if let Some(key) = key {
        params.key_pair =
            Some(rcgen::KeyPair::from_pem(key).map_err(|e| format!("ca.key is not a key: {e}"))?);
    }
    rcgen::Certificate::from_params(params).map_err(|e| e.to_string())
}

fn valid_for(params: &mut rcgen::CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back, for clocks a little behind this one.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Writes `FILE.pem` and `FILE.key` in the CA's directory: a certificate for `name`,
/// naming `hosts`, for a node (server and client use) or a client.
fn issue(
    common: &Common,
    file: &str,
    name: &str,
    hosts: &[String],
    node: bool,
) -> Result<(PathBuf, PathBuf), String> {
    let ca_key_path = common.dir.join("ca.key");
    let ca_key = std::fs::read_to_string(&ca_key_path).map_err(|e| {
        format!(
            "cannot read the CA's key {}: {e} (create it with `scandium cert create-ca`)",
            ca_key_path.display()
        )
    })?;
    let ca = ca(Some(&ca_key), 3650)?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec());
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if node {
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    valid_for(&mut params, common.days.unwrap_or(365));
    let cert = rcgen::Certificate::from_params(params).map_err(|e| e.to_string())?;
    let pem = cert.serialize_pem_with_signer(&ca).map_err(|e| e.to_string())?;
    let (cert_path, key_path) =
        (common.dir.join(format!("{file}.pem")), common.dir.join(format!("{file}.key")));
    write(&cert_path, &pem, common.overwrite, false)?;
    write(&key_path, &cert.serialize_private_key_pem(), common.overwrite, true)?;
    Ok((cert_path, key_path))
}

/// Writes `text` to `path`, only readable by its owner if `secret`; refuses to replace a
/// file unless `overwrite`.
fn write(path: &Path, text: &str, overwrite: bool, secret: bool) -> Result<(), String> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            format!("{} exists; pass --overwrite to replace it", path.display())
        }
        _ => format!("cannot write {}: {e}", path.display()),
    })?;
    file.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
