//! `pgmoat certs init | issue | revoke | crl | check`: clap arguments and human-readable output on top of
//! the library functions. main.rs mounts [`CertsCommand`] and calls [`run`].

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use time::{Duration, OffsetDateTime};

use super::certinfo::{CertInfo, format_utc, read_pem_file};
use super::check::{
    CheckOptions, CheckReport, DEFAULT_CRITICAL_DAYS, DEFAULT_CRL_WARN_DAYS, DEFAULT_WARN_DAYS,
    Status,
};
use super::{
    CaOptions, CaPaths, CertsError, CrlOptions, IssueOptions, KeyAlgorithm, Reason, RevokeOptions,
    RevokeTarget, RsaBits, SignedCrl, Subject,
};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a certificate authority: OUT/ca/ca.crt (0644) and OUT/ca/ca.key (0600).
    Init {
        /// Directory for the certificates; the CA goes to OUT/ca/.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Two-letter country code (C).
        #[arg(long)]
        country: Option<String>,
        /// State or province (ST).
        #[arg(long)]
        state: Option<String>,
        /// City or locality (L).
        #[arg(long)]
        city: Option<String>,
        /// Organisation (O).
        #[arg(long)]
        org: Option<String>,
        /// Common name (CN) of the CA.
        #[arg(long, default_value = super::DEFAULT_CA_CN)]
        cn: String,
        /// RSA 2048 instead of EC P-256 (the same as --rsa-bits 2048).
        #[arg(long)]
        rsa: bool,
        /// An RSA key of this size instead of EC P-256: 2048, 3072 or 4096.
        #[arg(long, value_parser = parse_rsa_bits, conflicts_with = "rsa")]
        rsa_bits: Option<RsaBits>,
        /// Replace an existing CA (certificates it issued will no longer verify).
        #[arg(long)]
        force: bool,
    },
    /// Issue a server (or, with --client, client) certificate signed by the CA:
    /// OUT/NAME.crt (0644), OUT/NAME.key (0600), OUT/NAME-combined.pem (cert + key, 0600).
    Issue {
        /// File name stem, and the CN unless --cn is given (for client certificates the CN is
        /// the PostgreSQL user name).
        name: String,
        /// Subject alternative names: "DNS:postgres,DNS:localhost,IP:127.0.0.1,EMAIL:a@b",
        /// "URI:spiffe://prod/ns/billing/sa/api". Comma-separated; may repeat. A bare value is
        /// an IP if it parses as one, else DNS.
        #[arg(long = "san", value_delimiter = ',')]
        sans: Vec<String>,
        /// Output directory.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Directory holding ca.crt and ca.key [default: OUT/ca].
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Client certificate (extended key usage clientAuth instead of serverAuth).
        #[arg(long)]
        client: bool,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Common name [default: NAME].
        #[arg(long)]
        cn: Option<String>,
        /// RSA 2048 instead of EC P-256 (the same as --rsa-bits 2048).
        #[arg(long)]
        rsa: bool,
        /// An RSA key of this size instead of EC P-256: 2048, 3072 or 4096.
        #[arg(long, value_parser = parse_rsa_bits, conflicts_with = "rsa")]
        rsa_bits: Option<RsaBits>,
        /// Replace existing NAME.crt/NAME.key/NAME-combined.pem.
        #[arg(long)]
        force: bool,
    },
    /// Revoke a certificate this CA issued (OUT/NAME.crt, or --serial) and re-sign the CA's
    /// CRL, CADIR/ca.crl. Point client_tls_crl_file (or PostgreSQL's ssl_crl_file) at it and
    /// reload (SIGHUP) for the revocation to take effect.
    Revoke {
        /// The certificate's file stem in OUT (NAME.crt), as given to `certs issue`.
        #[arg(required_unless_present = "serial", conflicts_with = "serial")]
        name: Option<String>,
        /// The serial (hex, colons allowed) of a certificate whose file is gone.
        #[arg(long)]
        serial: Option<String>,
        /// Directory holding NAME.crt.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Directory holding ca.crt and ca.key [default: OUT/ca].
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Why (RFC 5280 reason code): unspecified, key-compromise, affiliation-changed,
        /// superseded, cessation-of-operation, privilege-withdrawn.
        #[arg(long, default_value = "unspecified", value_parser = parse_reason)]
        reason: Reason,
        /// Days until the CRL's next update.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// Re-sign the CA's CRL (CADIR/ca.crl) with a new next update and a higher CRL number,
    /// revoking nothing new; run it from cron well inside --days. Creates an empty CRL when
    /// nothing was ever revoked.
    Crl {
        /// Certificates directory (the CA is OUT/ca unless --ca-dir says otherwise).
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Directory holding ca.crt and ca.key [default: OUT/ca].
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Days until the CRL's next update.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// Show subject, SANs, expiry and chain status of certificates, and the next update and
    /// signature of CRLs; exit 0 ok, 1 warning, 2 critical, 3 unknown (the check itself
    /// failed: a path that does not exist, an unreadable --ca, bad arguments). Directories
    /// are scanned for *.crt, *.pem, *.key and *.crl (one level deep).
    Check {
        /// Certificate files or directories.
        #[arg(default_value = "certs")]
        paths: Vec<PathBuf>,
        /// CA certificate to verify chains against [default: DIR/ca/ca.crt if present].
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Warn when a certificate expires within this many days.
        #[arg(long, default_value_t = DEFAULT_WARN_DAYS)]
        warn_days: i64,
        /// Critical when a certificate expires within this many days.
        #[arg(long, default_value_t = DEFAULT_CRITICAL_DAYS)]
        critical_days: i64,
        /// Warn when a CRL's next update is within this many days (past it is critical).
        #[arg(long, default_value_t = DEFAULT_CRL_WARN_DAYS)]
        crl_warn_days: i64,
    },
}

/// `certs check`'s exit code when the check itself could not be done (Nagios UNKNOWN), so
/// cron and monitoring never take an error for a warning (1) or critical (2).
pub const EXIT_UNKNOWN: u8 = 3;

/// Performs the command, printing to stdout (warnings to stderr).
pub fn run(cmd: CertsCommand) -> Result<ExitCode, CertsError> {
    let code = run_to(cmd, &mut io::stdout().lock(), &mut io::stderr().lock())?;
    Ok(ExitCode::from(code))
}

/// [`run`] with explicit output streams; returns the process exit code.
pub fn run_to(
    cmd: CertsCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, CertsError> {
    match cmd {
        CertsCommand::Init {
            out: dir,
            days,
            country,
            state,
            city,
            org,
            cn,
            rsa,
            rsa_bits,
            force,
        } => {
            let mut opts = CaOptions::new(dir);
            opts.subject = Subject {
                country,
                state,
                city,
                org,
                cn: Some(cn),
            };
            opts.not_after = opts.not_before + Duration::hours(1) + Duration::days(days.into());
            opts.key_algorithm = algorithm(rsa, rsa_bits);
            opts.force = force;
            let paths = super::init_ca(&opts)?;
            print_init(&paths, out).map_err(stdout_err)?;
            Ok(0)
        }
        CertsCommand::Issue {
            name,
            sans,
            out: dir,
            ca_dir,
            client,
            days,
            cn,
            rsa,
            rsa_bits,
            force,
        } => {
            let sans: Vec<String> = sans
                .into_iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            let mut opts = IssueOptions::new(name, sans, dir);
            opts.ca_dir = ca_dir;
            opts.client = client;
            opts.subject.cn = cn;
            opts.not_after = opts.not_before + Duration::hours(1) + Duration::days(days.into());
            opts.key_algorithm = algorithm(rsa, rsa_bits);
            opts.force = force;
            let paths = super::issue(&opts)?;
            let info = first_cert(&paths.cert)?;
            let ca = first_cert(&CaPaths::in_dir(&opts.effective_ca_dir()).cert)?;
            print_issue(&opts, &paths, &info, out).map_err(stdout_err)?;
            issue_warnings(&opts, &info, &ca, err).map_err(stdout_err)?;
            Ok(0)
        }
        CertsCommand::Revoke {
            name,
            serial,
            out: dir,
            ca_dir,
            reason,
            days,
        } => {
            let ca_dir = ca_dir.unwrap_or_else(|| dir.join("ca"));
            let target = match (name, serial) {
                (_, Some(serial)) => RevokeTarget::Serial(serial),
                (Some(name), None) => RevokeTarget::Certificate(dir.join(format!("{name}.crt"))),
                (None, None) => unreachable!("clap requires NAME or --serial"),
            };
            let revoked = super::revoke(&RevokeOptions {
                target,
                reason,
                crl: CrlOptions::new(ca_dir, days.into()),
            })?;
            print_revoked(&revoked, out).map_err(stdout_err)?;
            Ok(0)
        }
        CertsCommand::Crl {
            out: dir,
            ca_dir,
            days,
        } => {
            let ca_dir = ca_dir.unwrap_or_else(|| dir.join("ca"));
            let signed = super::sign_crl(&CrlOptions::new(ca_dir, days.into()))?;
            print_crl(&signed, out).map_err(stdout_err)?;
            Ok(0)
        }
        CertsCommand::Check {
            paths,
            ca,
            warn_days,
            critical_days,
            crl_warn_days,
        } => {
            let opts = CheckOptions {
                ca_file: ca,
                warn_days,
                critical_days,
                crl_warn_days,
                now: OffsetDateTime::now_utc(),
            };
            let report = match super::check(&paths, &opts) {
                Ok(report) => report,
                Err(e) => {
                    writeln!(err, "pgmoat: certs check: UNKNOWN: {e}").map_err(stdout_err)?;
                    return Ok(EXIT_UNKNOWN);
                }
            };
            print_report(&report, out).map_err(stdout_err)?;
            Ok(report.exit_code())
        }
    }
}

fn algorithm(rsa: bool, rsa_bits: Option<RsaBits>) -> KeyAlgorithm {
    match (rsa, rsa_bits) {
        (_, Some(bits)) => KeyAlgorithm::Rsa(bits),
        (true, None) => KeyAlgorithm::Rsa(RsaBits::B2048),
        (false, None) => KeyAlgorithm::EcP256,
    }
}

fn parse_rsa_bits(raw: &str) -> Result<RsaBits, String> {
    raw.trim()
        .parse::<u32>()
        .ok()
        .and_then(RsaBits::from_bits)
        .ok_or_else(|| {
            format!("{raw:?} is not an RSA key size pgmoat generates: 2048, 3072 or 4096")
        })
}

fn parse_reason(raw: &str) -> Result<Reason, String> {
    Reason::from_name(raw.trim()).ok_or_else(|| {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
        format!(
            "{raw:?} is not a revocation reason; use one of {}",
            names.join(", ")
        )
    })
}

fn print_revoked(revoked: &super::Revoked, out: &mut dyn Write) -> io::Result<()> {
    let e = &revoked.entry;
    let who = e.subject.as_deref().unwrap_or("(by serial)");
    if revoked.newly {
        writeln!(out, "Revoked serial {} {who}", e.serial)?;
        writeln!(out, "  reason       {}", e.reason.name())?;
    } else {
        writeln!(
            out,
            "Serial {} was already revoked at {}; nothing new recorded",
            e.serial, e.revoked_at
        )?;
    }
    print_crl(&revoked.crl, out)?;
    writeln!(
        out,
        "Reload pgmoat (SIGHUP, or watch_files) where client_tls_crl_file points at the CRL; connections made before stay open."
    )
}

fn print_crl(signed: &SignedCrl, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "Signed CRL {}", signed.path.display())?;
    writeln!(out, "  CRL number   {}", signed.crl_number)?;
    writeln!(out, "  revoked      {} certificate(s)", signed.revoked)?;
    writeln!(
        out,
        "  next update  {}  (re-sign before then: `pgmoat certs crl`)",
        format_utc(signed.next_update)
    )
}

fn stdout_err(e: io::Error) -> CertsError {
    CertsError::io(Path::new("<stdout>"), e)
}

fn first_cert(path: &Path) -> Result<CertInfo, CertsError> {
    read_pem_file(path)?
        .into_iter()
        .next()
        .ok_or_else(|| CertsError::BadPem {
            path: path.to_path_buf(),
            reason: "no certificate in file".into(),
        })
}

fn print_init(paths: &CaPaths, out: &mut dyn Write) -> io::Result<()> {
    let info = first_cert(&paths.cert).map_err(io::Error::other)?;
    writeln!(out, "Created CA {}", info.subject)?;
    writeln!(
        out,
        "  certificate  {}  (0644; the ssl_ca_file/sslrootcert for PostgreSQL, pgmoat and clients)",
        paths.cert.display()
    )?;
    writeln!(
        out,
        "  private key  {}  (0600; keep it secret, only `certs issue` needs it)",
        paths.key.display()
    )?;
    writeln!(out, "  valid until  {}", format_utc(info.not_after))?;
    writeln!(out, "  serial       {}", info.serial_hex)
}

fn print_issue(
    opts: &IssueOptions,
    paths: &super::IssuedPaths,
    info: &CertInfo,
    out: &mut dyn Write,
) -> io::Result<()> {
    let kind = if opts.client { "client" } else { "server" };
    writeln!(out, "Issued {kind} certificate {}", info.subject)?;
    if !info.sans.is_empty() {
        writeln!(out, "  SANs         {}", info.sans.join(", "))?;
    }
    writeln!(out, "  certificate  {}  (0644)", paths.cert.display())?;
    writeln!(out, "  private key  {}  (0600)", paths.key.display())?;
    writeln!(
        out,
        "  combined     {}  (certificate then key, 0600)",
        paths.combined.display()
    )?;
    writeln!(out, "  issuer       {}", info.issuer)?;
    writeln!(out, "  valid until  {}", format_utc(info.not_after))?;
    writeln!(out, "  serial       {}", info.serial_hex)?;
    if opts.client
        && let Some(cn) = &info.common_name
    {
        writeln!(
            out,
            "  PostgreSQL `cert` authentication maps this certificate to user {cn:?}"
        )?;
    }
    Ok(())
}

fn issue_warnings(
    opts: &IssueOptions,
    info: &CertInfo,
    ca: &CertInfo,
    err: &mut dyn Write,
) -> io::Result<()> {
    if !opts.client && info.sans.is_empty() {
        writeln!(
            err,
            "warning: no --san given: verify-full clients (libpq 17+, rustls, pgmoat) match \
             host names against SANs only and will reject this server certificate"
        )?;
    }
    if info.not_after > ca.not_after {
        writeln!(
            err,
            "warning: the certificate outlives its CA (CA valid until {}); it stops \
             verifying when the CA expires",
            format_utc(ca.not_after)
        )?;
    }
    Ok(())
}

fn print_report(report: &CheckReport, out: &mut dyn Write) -> io::Result<()> {
    for c in &report.certs {
        if c.index == 0 {
            writeln!(out, "{}", c.path.display())?;
        } else {
            writeln!(out, "{} [certificate #{}]", c.path.display(), c.index + 1)?;
        }
        let i = &c.info;
        writeln!(out, "  subject      {}", i.subject)?;
        writeln!(out, "  issuer       {}", i.issuer)?;
        if !i.sans.is_empty() {
            writeln!(out, "  SANs         {}", i.sans.join(", "))?;
        }
        writeln!(out, "  serial       {}", i.serial_hex)?;
        writeln!(out, "  purpose      {}", purpose(i))?;
        writeln!(out, "  not before   {}", format_utc(i.not_before))?;
        writeln!(
            out,
            "  not after    {} ({} days left)",
            format_utc(i.not_after),
            c.days_left
        )?;
        writeln!(out, "  chain        {}", c.chain)?;
        for other in &c.also_in {
            writeln!(out, "  also in      {}", other.display())?;
        }
        writeln!(out, "  status       {}", c.status)?;
        for reason in &c.reasons {
            writeln!(out, "               {reason}")?;
        }
        writeln!(out)?;
    }
    for c in &report.crls {
        if c.index == 0 {
            writeln!(out, "{} [CRL]", c.path.display())?;
        } else {
            writeln!(out, "{} [CRL #{}]", c.path.display(), c.index + 1)?;
        }
        writeln!(out, "  issuer       {}", c.issuer)?;
        if let Some(number) = &c.crl_number {
            writeln!(out, "  CRL number   {number}")?;
        }
        writeln!(out, "  revoked      {} certificate(s)", c.revoked)?;
        writeln!(out, "  this update  {}", format_utc(c.this_update))?;
        match c.next_update {
            Some(next) => writeln!(out, "  next update  {}", format_utc(next))?,
            None => writeln!(out, "  next update  (none)")?,
        }
        writeln!(out, "  signature    {}", c.signature)?;
        writeln!(out, "  status       {}", c.status)?;
        for reason in &c.reasons {
            writeln!(out, "               {reason}")?;
        }
        writeln!(out)?;
    }
    for f in &report.files {
        writeln!(out, "{}: {}: {}", f.path.display(), f.status, f.message)?;
    }
    let count = |s: Status| report.certs.iter().filter(|c| c.status == s).count();
    let crls = if report.crls.is_empty() {
        String::new()
    } else {
        let count = |s: Status| report.crls.iter().filter(|c| c.status == s).count();
        format!(
            "; {} CRL(s): {} ok, {} warning, {} critical",
            report.crls.len(),
            count(Status::Ok),
            count(Status::Warning),
            count(Status::Critical)
        )
    };
    writeln!(
        out,
        "{} certificate(s): {} ok, {} warning, {} critical{crls}; overall {}",
        report.certs.len(),
        count(Status::Ok),
        count(Status::Warning),
        count(Status::Critical),
        report.status()
    )
}

fn purpose(i: &CertInfo) -> &'static str {
    match (i.is_ca, i.server_auth, i.client_auth) {
        (true, _, _) => "CA",
        (false, true, true) => "server and client",
        (false, true, false) => "server",
        (false, false, true) => "client",
        (false, false, false) => "neither TLS server nor client",
    }
}

#[cfg(test)]
mod tests;
